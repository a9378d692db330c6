;; A keepmesh service that talks to other workloads by id, wherever they run.
;; Message = 32-character target workload id + payload: sends the payload to
;; that workload and replies "sent" (or "fail"). Any shorter message (e.g.
;; "inbox"): replies with the oldest message received, or "empty".
(module
  (import "keepmesh" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "keepmesh" "recv" (func $recv (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "sent")
  (data (i32.const 8) "fail")
  (data (i32.const 16) "empty")

  ;; Messages land at 1024; replies from recv at 8192 (both fit in one page).
  (func (export "alloc") (param $len i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 4096)) (then unreachable))
    (i32.const 1024))

  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (local $n i32)
    (if (result i64) (i32.gt_u (local.get $len) (i32.const 32))
      (then
        (if (result i64)
          (i32.eqz (call $send (local.get $ptr) (i32.const 32)
                               (i32.add (local.get $ptr) (i32.const 32))
                               (i32.sub (local.get $len) (i32.const 32))))
          (then (i64.const 4))                                             ;; "sent"
          (else (i64.or (i64.shl (i64.const 8) (i64.const 32)) (i64.const 4)))))  ;; "fail"
      (else
        (local.set $n (call $recv (i32.const 8192) (i32.const 4096)))
        (if (result i64) (i32.lt_s (local.get $n) (i32.const 0))
          (then (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 5)))  ;; "empty"
          (else (i64.or (i64.shl (i64.const 8192) (i64.const 32))
                        (i64.extend_i32_u (local.get $n)))))))))
