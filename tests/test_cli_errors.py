"""Every CLI failure is one line on stderr; no flag value produces a traceback.

The argument parser of every verb is fuzzed (hypothesis over argv). The
network, agent start-up, simulator runs and sim-root key generation are
replaced by a fast one-line failure, because this test is about what the
CLI does with the flags a user types, not about those components (they have
their own tests). "internal error" (main()'s last-resort catch) counts as a
failure here: it means some flag value reached code that did not expect it.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keepmesh.agent.cli import CommandError, build_parser, main

VALUES = ["99999999999999999999999", "-99999999999999999999", "-1", "0", "1", "zz", "",
          "nope", "127.0.0.1:99999", "127.0.0.1:0", "[::1]:7400", ":", "x" * 300, "é",
          "\u202e", "inc", "--", "-", "1e9", "0x10", "nan", "/dev/null", "/nonexistent/x",
          ".", "a=b", "microcode=999", "1.5", "²", "٣"]


def _verbs() -> dict[tuple[str, ...], list[str]]:
    """argv prefix of every leaf verb -> its option strings."""
    out: dict[tuple[str, ...], list[str]] = {}

    def walk(parser: Any, prefix: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            out[prefix] = sorted({s for a in parser._actions for s in a.option_strings
                                  if s not in ("-h", "--help")})
            return
        for name, child in subs[0].choices.items():
            walk(child, (*prefix, name))

    walk(build_parser(), ())
    return out


VERBS = _verbs()


def _no_network(*args: Any, **kwargs: Any) -> Any:
    raise CommandError("stubbed: no agent in this test")


@contextlib.contextmanager
def _offline(tmp: Path) -> Iterator[None]:
    import keepmesh.agent.client as client
    import keepmesh.agent.startup as startup
    import keepmesh.agent.tee.sim as sim
    import keepmesh.simulations.runner as runner

    saved = [(client, "open_client", client.open_client),
             (startup, "build_agent", startup.build_agent),
             (sim, "init_sim_root", sim.init_sim_root),
             (runner, "simulate", runner.simulate)]

    async def no_client(*a: Any, **k: Any) -> Any:
        raise CommandError("stubbed: no agent in this test")

    def no_agent(*a: Any, **k: Any) -> Any:
        raise startup.StartupError("stubbed: no agent start in this test")

    client.open_client = no_client  # type: ignore[assignment]
    startup.build_agent = no_agent  # type: ignore[assignment]
    sim.init_sim_root = _no_network  # type: ignore[assignment]
    runner.simulate = _no_network  # type: ignore[assignment]
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        yield
    finally:
        os.chdir(cwd)
        for module, name, value in saved:
            setattr(module, name, value)


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def check(argv: list[str]) -> None:
    code, _, err = run(argv)
    assert "Traceback" not in err, (argv, err)
    assert "internal error" not in err, (argv, err)
    assert code in (0, 1, 2), (argv, code)
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("keepmesh"), (argv, err)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("cli-fuzz")
    with _offline(tmp):
        yield tmp


@pytest.mark.parametrize("argv", [
    ["call", "abc", "zz", "--hex"],
    ["logs", "abc", "--tail", "99999999999999999999999"],
    ["deploy", "examples/counter", "--wait-ms", "99999999999999999999"],
    ["deploy", "x" * 300],  # a name too long for the filesystem (found by the fuzz below)
    ["keygen", "x" * 300],  # the same, where the verb checks the path before writing
    ["keygen", "x" * 300, "--public"],
    ["attest", "verify", "/dev/null", "--certs", "x" * 300],
    ["attest", "verify", "/dev/null", "--collateral", "x" * 300],
    ["platform", "info", "--root", "x" * 300],
    ["call", "--", "abc", "--"],  # argparse gave MSG == [] for the lone extra "--"
    ["logs", "abc", "--tail", "-1"],
    ["agent", "--listen", "nope"],
    ["agent", "--max-keeps", "²"],  # str.isdigit() is true, int() refuses it (CLI sweep)
    ["agent", "--metrics", "127.0.0.1:99999"],
    ["simulate", "missing.toml", "--seed", "99999999999999999999999"],
    ["bogus"],
    [],
])
def test_known_bad_values_fail_in_one_line(workdir: Path, argv: list[str]) -> None:
    code, _, err = run(argv)
    assert code in (1, 2) and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "internal error" not in err


def test_call_hex_says_what_hex_is(workdir: Path) -> None:
    code, _, err = run(["call", "abc", "zz", "--hex"])
    assert code == 1 and "is not hex" in err


def test_usage_error_names_help(workdir: Path) -> None:
    code, _, err = run(["logs", "abc", "--tail", "99999999999999999999999"])
    assert code == 2 and "out of range" in err and "keepmesh logs --help" in err


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_every_verb(workdir: Path, data: st.DataObject) -> None:
    prefix = data.draw(st.sampled_from(sorted(VERBS)))
    options = VERBS[prefix]
    token = st.one_of(st.sampled_from(options) if options else st.nothing(),
                      st.sampled_from(VALUES), st.text(max_size=12))
    rest = data.draw(st.lists(token, max_size=7))
    check([*prefix, *rest])



def test_root_takes_several_pems_after_one_flag_without_eating_positionals(
        tmp_path: Path) -> None:
    """DESIGN.md: client verbs and `attest verify` take `--root PEM ...`, like the agent."""
    from keepmesh.agent.cli import parse_command_line
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_text("x")
    b.write_text("y")
    A, B = str(a), str(b)
    args = parse_command_line(["members", "--root", A, B, "--json"])
    assert [str(r) for r in args.root] == [A, B] and args.json
    args = parse_command_line(["call", "ID", "MSG", "--root", A, B])
    assert [str(r) for r in args.root] == [A, B] and (args.id, args.message) == ("ID", "MSG")
    # positionals written after one root are not swallowed
    args = parse_command_line(["call", "--root", A, "ID", "MSG"])
    assert [str(r) for r in args.root] == [A] and (args.id, args.message) == ("ID", "MSG")
    args = parse_command_line(["attest", "verify", "ev.bin", "--root", A, B, "--root", A])
    assert args.root == [A, B, A] and args.evidence == "ev.bin"
    args = parse_command_line(["attest", "verify", "--root", A, "ev.bin"])
    assert args.root == [A] and args.evidence == "ev.bin"
    args = parse_command_line(["join", "--root", A, "127.0.0.1:7400"])  # not a file: a seed
    assert [str(r) for r in args.root] == [A] and args.seeds == ["127.0.0.1:7400"]
    # a usage error is still one line and exit 2
    with pytest.raises(SystemExit) as exc:
        parse_command_line(["call", "ID", "--root", A])
    assert exc.value.code == 2


@pytest.mark.parametrize("argv", [
    ["agent", "--advertise", "nope"],  # was advertised to peers; membership died on it
    ["agent", "--advertise", "127.0.0.1:0"],  # peers cannot dial port 0
    ["agent", "--listen", ""],  # was taken as "not given": the default 127.0.0.1:7400
    ["agent", "--advertise", ""],
    ["agent", "--metrics", ""],
    ["agent", "--join", "127.0.0.1:0"],  # a seed is dialled: port 0 never answers
])
def test_agent_addresses_are_checked_before_start(argv: list[str]) -> None:
    """Found by the CLI contract sweep: `--advertise nope` started an agent that said
    'listening on nope' while its membership task ended with an internal error."""
    from keepmesh.agent.cli import parse_command_line
    from keepmesh.agent.cli.agent import config_from_args
    with pytest.raises(CommandError, match="address"):
        config_from_args(parse_command_line(argv))


@pytest.mark.parametrize(("argv", "code", "needle"), [
    (["call", "\udcff", "inc"], 2, "argument ID: not valid UTF-8 text"),
    (["logs", "\udcff"], 2, "argument ID: not valid UTF-8 text"),
    (["stop", "\udcff"], 2, "argument ID: not valid UTF-8 text"),
    (["join", "127.0.0.1:1\udcff"], 2, "argument HOST:PORT: not valid UTF-8 text"),
    (["secrets", "set", "\udcff", "s", "--env", "HOME"], 2, "not valid UTF-8 text"),
    (["call", "abc", "\udcffinc"], 1, "MSG is not valid text"),  # was "--hex: not hex"
    (["secrets", "set", "abcdefgh", "s", "--env", "NO_SUCH_\udcff"], 1, "is not set"),
])
def test_arguments_that_are_not_utf8(workdir: Path, argv: list[str], code: int,
                                     needle: str) -> None:
    """A command-line argument that is not valid UTF-8 reaches Python with surrogate
    escapes (as `\\udcff`): sending one to an agent was an internal UnicodeEncodeError
    (found by the CLI contract sweep)."""
    got, _, err = run(argv)
    assert got == code and needle in err and len(err.strip().splitlines()) == 1, err
