;; A long-running keepmesh service with durable state.
;; Every message increments a counter kept in the keep's key/value store and
;; replies with the new value in decimal; the message "get" only reads it.
(module
  (import "keepmesh" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "keepmesh" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (import "keepmesh" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "count")          ;; state key, 5 bytes
  (data (i32.const 100) "counter: incremented")  ;; 20 bytes
  (data (i32.const 128) "get")

  ;; Input buffer at 1024; grow linear memory if a message does not fit.
  (func (export "alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.sub
        (i32.shr_u (i32.add (i32.add (i32.const 1024) (local.get $len)) (i32.const 65535))
                   (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $need)) (i32.const -1))
        (then unreachable))))
    (i32.const 1024))

  (func $load (result i64)
    (if (result i64)
      (i32.eq (call $kv_get (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8))
              (i32.const 8))
      (then (i64.load (i32.const 16)))
      (else (i64.const 0))))

  ;; Writes n in decimal ending at offset 96; returns the start offset.
  (func $itoa (param $n i64) (result i32)
    (local $p i32)
    (local.set $p (i32.const 96))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $n) (i64.const 10)))))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $digits (i64.ne (local.get $n) (i64.const 0))))
    (local.get $p))

  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (local $n i64)
    (local $start i32)
    (local.set $n (call $load))
    (if (i32.eqz
          (i32.and
            (i32.and (i32.eq (local.get $len) (i32.const 3))
                     (i32.eq (i32.load16_u (local.get $ptr)) (i32.load16_u (i32.const 128))))
            (i32.eq (i32.load8_u offset=2 (local.get $ptr)) (i32.load8_u (i32.const 130)))))
      (then
        (local.set $n (i64.add (local.get $n) (i64.const 1)))
        (i64.store (i32.const 16) (local.get $n))
        (if (i32.ne (call $kv_put (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8))
                    (i32.const 0))
          (then unreachable))
        (call $log (i32.const 100) (i32.const 20))))
    (local.set $start (call $itoa (local.get $n)))
    ;; reply = (ptr << 32) | len
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $start)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (i32.const 96) (local.get $start))))))
