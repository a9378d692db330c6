;; A keepmesh service that proves it received its secrets and data without revealing them.
;; Every message is answered (and printed to stdout) with FNV-1a-64 digests of
;;   - the secret `db_password`, read with the host function keepmesh.secret_get,
;;   - the data file `words`, read in 64 KiB chunks with keepmesh.data_read,
;;   - the secret `API_TOKEN`, declared `as_env = true`, read from the WASI environment:
;; "db_password=<16 hex> words=<16 hex> API_TOKEN=<16 hex>" (0000000000000000 if absent).
;; FNV-1a is not a cryptographic hash: this is a demonstration, not a way to publish
;; digests of real passwords.
(module
  (import "keepmesh" "secret_get" (func $secret_get (param i32 i32 i32 i32) (result i32)))
  (import "keepmesh" "data_read" (func $data_read (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $env_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  ;; 0..511 scratch and constants, 512.. output line, 4096.. secret (64 KiB),
  ;; 69632.. data chunk (64 KiB), 135168.. environ pointers (1 KiB), 137216.. environ
  ;; strings (128 KiB), 327680.. the incoming message (alloc grows memory as needed).
  (memory (export "memory") 5)
  (data (i32.const 64) "db_password")
  (data (i32.const 80) "words")
  (data (i32.const 96) "API_TOKEN=")
  (data (i32.const 128) "db_password=")
  (data (i32.const 144) " words=")
  (data (i32.const 152) " API_TOKEN=")
  (data (i32.const 176) "0123456789abcdef")
  (global $out (mut i32) (i32.const 512))

  (func (export "alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.sub
        (i32.shr_u (i32.add (i32.add (i32.const 327680) (local.get $len)) (i32.const 65535))
                   (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $need)) (i32.const -1))
        (then unreachable))))
    (i32.const 327680))

  (func $fnv (param $p i32) (param $n i32) (param $h i64) (result i64)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $h (i64.mul (i64.xor (local.get $h) (i64.load8_u (local.get $p)))
                               (i64.const 0x100000001b3)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $h))

  (func $emit (param $src i32) (param $n i32)
    (memory.copy (global.get $out) (local.get $src) (local.get $n))
    (global.set $out (i32.add (global.get $out) (local.get $n))))

  (func $emit_hex (param $h i64)
    (local $shift i32)
    (local.set $shift (i32.const 60))
    (loop $digit
      (i32.store8 (global.get $out)
        (i32.load8_u offset=176
          (i32.wrap_i64 (i64.and (i64.shr_u (local.get $h) (i64.extend_i32_u (local.get $shift)))
                                 (i64.const 15)))))
      (global.set $out (i32.add (global.get $out) (i32.const 1)))
      (local.set $shift (i32.sub (local.get $shift) (i32.const 4)))
      (br_if $digit (i32.ge_s (local.get $shift) (i32.const 0)))))

  (func $secret_digest (result i64)
    (local $n i32)
    (local.set $n (call $secret_get (i32.const 64) (i32.const 11) (i32.const 4096) (i32.const 65536)))
    (if (result i64) (i32.lt_s (local.get $n) (i32.const 0))
      (then (i64.const 0))
      (else (call $fnv (i32.const 4096) (local.get $n) (i64.const 0xcbf29ce484222325)))))

  (func $data_digest (result i64)
    (local $off i32) (local $size i32) (local $chunk i32) (local $h i64)
    (local.set $h (i64.const 0xcbf29ce484222325))
    (loop $more
      (local.set $size (call $data_read (i32.const 80) (i32.const 5) (local.get $off)
                                        (i32.const 69632) (i32.const 65536)))
      (if (i32.lt_s (local.get $size) (i32.const 0)) (then (return (i64.const 0))))
      (local.set $chunk (i32.sub (local.get $size) (local.get $off)))
      (if (i32.gt_s (local.get $chunk) (i32.const 65536)) (then (local.set $chunk (i32.const 65536))))
      (if (i32.gt_s (local.get $chunk) (i32.const 0))
        (then
          (local.set $h (call $fnv (i32.const 69632) (local.get $chunk) (local.get $h)))
          (local.set $off (i32.add (local.get $off) (local.get $chunk)))
          (br $more))))
    (local.get $h))

  ;; 1 if the NUL-terminated string at $p starts with "API_TOKEN="
  (func $is_token (param $p i32) (result i32)
    (local $i i32)
    (block $no
      (loop $cmp
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $i)))
                           (i32.load8_u offset=96 (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $cmp (i32.lt_u (local.get $i) (i32.const 10))))
      (return (i32.const 1)))
    (i32.const 0))

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $end
      (loop $scan
        (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $scan)))
    (local.get $n))

  (func $env_digest (result i64)
    (local $count i32) (local $i i32) (local $p i32)
    (drop (call $env_sizes (i32.const 0) (i32.const 4)))
    (local.set $count (i32.load (i32.const 0)))
    (if (i32.or (i32.gt_u (local.get $count) (i32.const 256))
                (i32.gt_u (i32.load (i32.const 4)) (i32.const 131072)))
      (then (return (i64.const 0))))
    (drop (call $env_get (i32.const 135168) (i32.const 137216)))
    (block $none
      (loop $each
        (br_if $none (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $p (i32.load (i32.add (i32.const 135168) (i32.shl (local.get $i) (i32.const 2)))))
        (if (call $is_token (local.get $p))
          (then
            (local.set $p (i32.add (local.get $p) (i32.const 10)))
            (return (call $fnv (local.get $p) (call $strlen (local.get $p))
                              (i64.const 0xcbf29ce484222325)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i64.const 0))

  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (local $n i32)
    (global.set $out (i32.const 512))
    (call $emit (i32.const 128) (i32.const 12))
    (call $emit_hex (call $secret_digest))
    (call $emit (i32.const 144) (i32.const 7))
    (call $emit_hex (call $data_digest))
    (call $emit (i32.const 152) (i32.const 11))
    (call $emit_hex (call $env_digest))
    (local.set $n (i32.sub (global.get $out) (i32.const 512)))
    ;; print the line (with a newline) to stdout, then reply with it (without)
    (i32.store8 (global.get $out) (i32.const 10))
    (i32.store (i32.const 16) (i32.const 512))
    (i32.store (i32.const 20) (i32.add (local.get $n) (i32.const 1)))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.extend_i32_u (local.get $n)))))
