#!/usr/bin/env bash
# One scripted run of the GPU benchmarks on the lent H200 (see README "Running on the GPU machine").
# Carry: .gl .whl grilly_kv/spirv .cache/kp-0.9.0.tar.gz. Results go to $OUT (or ./gpu-results).
# Pass GRILLY_KV_COMMIT=$(git rev-parse --short HEAD) in the command: the copy on the GPU machine
# reports stale git metadata.
# Usage: bash benchmarks/run_h200.sh [part ...]
#   parts: decode decode1b long quant paged soak weights suite grid peers-build peers tests ab final s5a s5b s5c s5d s5e
# Carry .peers too for peers-build / peers (benchmarks/llamacpp_build.sh makes its tarballs). (default: decode long quant paged)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
source .gl/enter.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 build.py 2>&1 | grep -v WARNING | tail -3 || exit 1
parts=${*:-decode long quant paged}
R=benchmarks/results
run() { echo "=== $*"; timeout "${LIMIT:-300}" "$@" 2>&1 | tail -40; }
for part in $parts; do
  case $part in
    decode)
      python3 benchmarks/timing_checkpoint.py smollm2 /tmp/smollm2-timing.gguf
      GRILLY_KV_GGUF=/tmp/smollm2-timing.gguf run python3 benchmarks/bench_model_decode.py \
        --policies dense,streaming:512,quest:512,entmax:512,triattention:512,tappa:512,predictor:512 \
        --contexts 1024,8064 --steps 48
      cp $R/model_decode.json "$OUT/" ;;
    long)
      LIMIT=${LONG_LIMIT:-300} run python3 benchmarks/bench_long_context.py ${LONG_ARGS:-}
      cp $R/long_context*.json "$OUT/" ;;
    quant)
      GRILLY_KV_DEVICE=vulkan run python3 -m pytest -q -x -p no:cacheprovider tests/test_model_matmul_q.py
      run python3 benchmarks/bench_quant_decode.py --shapes smollm2-135m --sweep Q4_1
      run python3 benchmarks/bench_quant_decode.py --shapes llama-3.2-1b --tokens 1 --sweep Q4_K --name quant_decode_llama1b_T1
      run python3 benchmarks/bench_quant_decode.py --shapes llama-3.2-1b --tokens 512 --name quant_decode_llama1b_T512
      cp $R/quant_decode*.json "$OUT/" ;;
    decode1b)
      python3 benchmarks/timing_checkpoint.py llama32-1b /tmp/llama32-1b-q4k.gguf --matrix-type Q4_K
      run python3 benchmarks/bench_model_decode.py -m /tmp/llama32-1b-q4k.gguf --name model_decode_llama1b \
        --policies dense,streaming:512,quest:512 --contexts 1024,8064 --steps 48 --weight-format native
      cp $R/model_decode_llama1b.json "$OUT/" ;;
    soak)
      run python3 benchmarks/bench_soak.py
      cp $R/soak.json "$OUT/" ;;
    weights) # the real SmolLM2 file in two parts (64 MiB carry limit per call; carried paths do not
             # survive to the next call, /tmp does): call 1 carries .wa (part00 + sha256) and runs this
             # part, call 2 carries .wb (part01) and runs suite or grid
      cp .wa/* .wb/* /tmp/ 2>/dev/null; ls -la /tmp/smollm2.* ;;
    suite|grid)
      cp .wb/* /tmp/ 2>/dev/null; cat /tmp/smollm2.gguf.part00 /tmp/smollm2.gguf.part01 > /tmp/smollm2.gguf
      [ "$(sha256sum < /tmp/smollm2.gguf | cut -d' ' -f1)" = "$(cat /tmp/smollm2.sha256)" ] || { echo "weights damaged"; exit 1; }
      if [ $part = suite ]; then
        LIMIT=$(( ${SUITE_LIMIT:-420} + 240 )) run python3 benchmarks/bench_suite.py -m /tmp/smollm2.gguf \
          --name suite_h200 --time-limit ${SUITE_LIMIT:-420} ${SUITE_ARGS:-}
        cp $R/suite_h200.json $R/suite_h200.md "$OUT/"; continue
      fi
      # grid: grilly_kv's suite in parallel shards (GRID_SHARDS "name=policies ...", GRID_ARGS shared)
      # and the kvpress peer (.kvwheels carried; CUDA torch of this machine) at once, each with a
      # time limit; every finished run is kept; one tarball comes back
      lim=${GRID_LIMIT:-480}; pids=()
      if [ -d .kvwheels ]; then
        timeout $(( lim + 100 )) python3 benchmarks/kvpress_peer.py -m /tmp/smollm2.gguf --device cuda \
          --site /tmp/kvsite --wheels .kvwheels --time-limit $lim --out $R/kvpress_h200.json ${KV_ARGS:-} \
          > /tmp/grid_kvpress.log 2>&1 & pids+=($!)
      fi
      for shard in ${GRID_SHARDS:-a=dense,triattention,tappa b=streaming,quest c=entmax,predictor,entmax15}; do
        spec=${shard#*=}; extra=""          # name=policies[:budgets]
        [ "${spec#*:}" != "$spec" ] && extra="--budgets ${spec#*:}"
        timeout $(( lim + 150 )) python3 benchmarks/bench_suite.py -m /tmp/smollm2.gguf --name suite_h200_${shard%%=*} \
          --policies ${spec%%:*} --time-limit $lim ${GRID_ARGS:-} $extra > /tmp/grid_${shard%%=*}.log 2>&1 & pids+=($!)
      done
      if [ -n "${GRID_PPL:-}" ]; then    # perplexity only, in place: GRID_PPL policies, GRID_PPL_ARGS
        timeout $(( lim + 150 )) python3 benchmarks/bench_suite.py -m /tmp/smollm2.gguf --name suite_h200_ppl \
          --policies $GRID_PPL --time-limit $lim --no-cells --settings in-place ${GRID_PPL_ARGS:-} \
          > /tmp/grid_ppl.log 2>&1 & pids+=($!)
      fi
      wait "${pids[@]}"
      for f in /tmp/grid_*.log; do echo "=== $f"; grep -v Warning $f | tail -25; done
      tar -czf "$OUT/grid.tgz" $R/suite_h200_*.json $R/suite_h200_*.md $R/kvpress_h200*.json /tmp/grid_*.log 2>/dev/null ;;
    peers-build)   # llama.cpp's CUDA llama-bench from .peers/llamacpp-src.tar.xz (kept in /tmp between warm calls)
      [ -x /tmp/llcuda/build/bin/llama-bench ] || JOBS=15 timeout 560 bash benchmarks/llamacpp_build.sh \
        --cuda /tmp/llcuda .peers/llamacpp-src.tar.xz 2>&1 | tail -5 ;;
    peers)   # llama-bench (Vulkan: .peers/llamacpp-vulkan.tar.xz; CUDA: peers-build) on the timing-only files,
             # then grilly_kv's dense decode/prefill on the same files, then one table
      [ -f /tmp/smollm2-timing.gguf ] || python3 benchmarks/timing_checkpoint.py smollm2 /tmp/smollm2-timing.gguf
      [ -f /tmp/llama32-1b-q4k.gguf ] || python3 benchmarks/timing_checkpoint.py llama32-1b /tmp/llama32-1b-q4k.gguf --matrix-type Q4_K
      [ -d /tmp/llamacpp-vulkan ] || tar -xJf .peers/llamacpp-vulkan.tar.xz -C /tmp
      specs=()
      for f in smollm2-timing llama32-1b-q4k; do
        for b in vulkan cuda; do
          bin=/tmp/llamacpp-vulkan/llama-bench; [ $b = cuda ] && bin=/tmp/llcuda/build/bin/llama-bench
          [ -x $bin ] || { echo "no $b llama-bench"; continue; }
          echo "=== llama-bench $b $f"
          timeout 150 $bin -m /tmp/$f.gguf -ngl 99 -p 512 -n 128 -d 0,1024,8064 -r 3 -o json > "$OUT/lb_${b}_$f.json" 2> "$OUT/lb_${b}_$f.log"
          tail -2 "$OUT/lb_${b}_$f.log"; specs+=("$b=$OUT/lb_${b}_$f.json")
        done
      done
      GRILLY_KV_GGUF=/tmp/smollm2-timing.gguf run python3 benchmarks/bench_model_decode.py -m /tmp/smollm2-timing.gguf \
        --policies ${PEER_POLICIES:-dense,streaming:512,quest:512,entmax:512,triattention:512,tappa:512,predictor:512} \
        --contexts 1024,8064 --steps 48 --weight-format native --name model_decode
      run python3 benchmarks/bench_model_decode.py -m /tmp/llama32-1b-q4k.gguf --name model_decode_llama1b \
        --policies dense,streaming:512,quest:512 --contexts 1024,8064 --steps 48 --weight-format native
      python3 benchmarks/peer_table.py --ours $R/model_decode.json $R/model_decode_llama1b.json \
        --llamacpp "${specs[@]}" --name peers_h200
      cp $R/model_decode.json $R/model_decode_llama1b.json $R/peers_h200.json $R/peers_h200.md "$OUT/" ;;
    tests)   # the shaders whose cross-workgroup ordering or subgroup layout lavapipe cannot fully exercise
      # (its log comes back as tests_h200.log: later parts' output can push it out of the returned tail)
      GRILLY_KV_DEVICE=vulkan timeout ${TESTS_LIMIT:-240} python3 -m pytest -q -x -p no:cacheprovider \
        tests/test_kv_slot_attention.py tests/test_topk_select.py tests/test_decode_attention.py \
        tests/test_model_matmul_q.py ${TESTS_EXTRA:-} 2>&1 | tee "$OUT/tests_h200.log" | tail -5 ;;
    ab)      # this session's GPU paths against the old ones, same run, timing-only checkpoints: prefill
             # attention query tiles (1 = untiled, 32) x one-token mat-vec layout (rows, coalesced)
      [ -f /tmp/smollm2-timing.gguf ] || python3 benchmarks/timing_checkpoint.py smollm2 /tmp/smollm2-timing.gguf
      [ -f /tmp/llama32-1b-q4k.gguf ] || python3 benchmarks/timing_checkpoint.py llama32-1b /tmp/llama32-1b-q4k.gguf --matrix-type Q4_K
      run python3 benchmarks/bench_model_decode.py -m /tmp/smollm2-timing.gguf --contexts 1024,8064 \
        --policies dense,quest:512 --weight-format native --steps 32 --prefill-qtile 1,32 --matvec rows,coalesced --name ab_smollm2
      run python3 benchmarks/bench_model_decode.py -m /tmp/llama32-1b-q4k.gguf --contexts 1024,8064 \
        --policies dense --weight-format native --steps 32 --prefill-qtile 1,32 --matvec rows,coalesced --name ab_llama1b
      cp $R/ab_*.json "$OUT/" ;;
    final)   # this session's A/B in one call: NVIDIA tests of the new fused paths, SmolLM2 every policy
             # with the new paths (mat-vec rows vs stream) and with the old ones, the 1B file (rows vs
             # stream), llama.cpp Vulkan on the same files, long context at 128K; each step time-limited
             # and appended to $OUT/final.tar as soon as it ends (a call cut by the device budget keeps them)
      keep() { tar -rf "$OUT/final.tar" "$@" 2>/dev/null; }
      [ -f /tmp/smollm2-timing.gguf ] || python3 benchmarks/timing_checkpoint.py smollm2 /tmp/smollm2-timing.gguf
      [ -f /tmp/llama32-1b-q4k.gguf ] || python3 benchmarks/timing_checkpoint.py llama32-1b /tmp/llama32-1b-q4k.gguf --matrix-type Q4_K
      GRILLY_KV_DEVICE=vulkan timeout ${TESTS_LIMIT:-60} python3 -m pytest -q -x -p no:cacheprovider ${FINAL_TESTS:-} \
        > /tmp/tests_h200.log 2>&1; tail -3 /tmp/tests_h200.log; keep /tmp/tests_h200.log
      ALL=dense,streaming:512,quest:512,entmax:512,triattention:512,tappa:512,predictor:512
      LIMIT=${NEW_LIMIT:-100} run python3 benchmarks/bench_model_decode.py -m /tmp/smollm2-timing.gguf --contexts 1024,8064 \
        --policies $ALL --weight-format native --steps 24 --chunk 512 --pp-chunk --matvec default,stream --name final_smollm2_new
      keep $R/final_smollm2_new.json
      GRILLY_KV_SLOT_FUSE=0 GRILLY_KV_QUEST_ONE=0 GRILLY_KV_PREDICTOR_FAST=0 GRILLY_KV_DECODE_WORKGROUPS=0 \
        GRILLY_KV_DECODE_HEAD_GROUPS=1 LIMIT=${OLD_LIMIT:-60} run python3 \
        benchmarks/bench_model_decode.py -m /tmp/smollm2-timing.gguf --contexts 1024,8064 --policies $ALL \
        --weight-format native --steps 24 --chunk 512 --name final_smollm2_old
      keep $R/final_smollm2_old.json
      LIMIT=${B1_LIMIT:-50} run python3 benchmarks/bench_model_decode.py -m /tmp/llama32-1b-q4k.gguf --contexts 1024,8064 \
        --policies dense,streaming:512,quest:512 --weight-format native --steps 24 --chunk 512 --pp-chunk \
        --matvec default,stream --name final_llama1b
      keep $R/final_llama1b.json
      [ -d /tmp/llamacpp-vulkan ] || tar -xJf .peers/llamacpp-vulkan.tar.xz -C /tmp
      for f in smollm2-timing llama32-1b-q4k; do
        timeout ${LB_LIMIT:-35} /tmp/llamacpp-vulkan/llama-bench -m /tmp/$f.gguf -ngl 99 -p 512 -n 128 -d 1024,8064 -r 2 \
          -o json > "$R/lb_vulkan_$f.json" 2> /tmp/lb_$f.log; tail -1 /tmp/lb_$f.log; keep "$R/lb_vulkan_$f.json"
      done
      python3 benchmarks/peer_table.py --ours $R/final_smollm2_new.json $R/final_llama1b.json \
        --llamacpp vulkan=$R/lb_vulkan_smollm2-timing.json vulkan=$R/lb_vulkan_llama32-1b-q4k.json --name final_peers | tail -12
      keep $R/final_peers.md $R/final_peers.json
      LIMIT=${LONG_LIMIT:-80} run python3 benchmarks/bench_long_context.py --layers 4 --contexts 131072 --budgets 2048 \
        --steps 10 --policies dense,streaming,quest,entmax,predictor --no-torch --name final_long ${LONG_ARGS:-}
      keep $R/final_long.json ;;
    s5a)     # session 5, call 1: the predictor split diagnosis, NVIDIA tests of every new fused path (all of
             # them: no -x), SmolLM2 every policy (new paths; mat-vec default vs stream; the predictor's
             # fast kernels A/B), the 1B file, llama.cpp Vulkan on both files; steps kept in $OUT/s5a.tar
      keep() { tar -rf "$OUT/s5a.tar" "$@" 2>/dev/null; }
      [ -f /tmp/smollm2-timing.gguf ] || python3 benchmarks/timing_checkpoint.py smollm2 /tmp/smollm2-timing.gguf
      [ -f /tmp/llama32-1b-q4k.gguf ] || python3 benchmarks/timing_checkpoint.py llama32-1b /tmp/llama32-1b-q4k.gguf --matrix-type Q4_K
      timeout ${DIAG_LIMIT:-60} python3 benchmarks/diag_predictor_split.py --repeats 5 \
        --out $R/diag_predictor_split_h200.json > /tmp/diag_predictor_split.log 2>&1
      tail -22 /tmp/diag_predictor_split.log; keep /tmp/diag_predictor_split.log $R/diag_predictor_split_h200.json
      GRILLY_KV_DEVICE=vulkan timeout ${TESTS_LIMIT:-120} python3 -m pytest -q -p no:cacheprovider \
        tests/test_predictor_twin_ops.py tests/test_model_matmul_q_stream.py tests/test_kv_slot_attention.py \
        tests/test_quest_one.py tests/test_model_slot_fuse.py ${TESTS_EXTRA:-} > /tmp/tests_h200_s5.log 2>&1
      grep -E "FAILED|passed|failed" /tmp/tests_h200_s5.log | tail -8; keep /tmp/tests_h200_s5.log
      ALL=dense,streaming:512,quest:512,entmax:512,triattention:512,tappa:512,predictor:512
      LIMIT=${NEW_LIMIT:-120} run python3 benchmarks/bench_model_decode.py -m /tmp/smollm2-timing.gguf --contexts 1024,8064 \
        --policies $ALL --weight-format native --steps 24 --chunk 512 --pp-chunk --matvec default,stream --name s5_smollm2
      keep $R/s5_smollm2.json
      GRILLY_KV_PREDICTOR_FAST=1 LIMIT=${PF_LIMIT:-40} run python3 benchmarks/bench_model_decode.py -m /tmp/smollm2-timing.gguf \
        --contexts 8064 --policies dense,predictor:512 --weight-format native --steps 24 --chunk 512 --name s5_smollm2_predfast
      keep $R/s5_smollm2_predfast.json
      LIMIT=${B1_LIMIT:-60} run python3 benchmarks/bench_model_decode.py -m /tmp/llama32-1b-q4k.gguf --contexts 1024,8064 \
        --policies dense,streaming:512,quest:512 --weight-format native --steps 24 --chunk 512 --pp-chunk \
        --matvec default,stream --name s5_llama1b
      keep $R/s5_llama1b.json
      [ -d /tmp/llamacpp-vulkan ] || tar -xJf .peers/llamacpp-vulkan.tar.xz -C /tmp
      for f in smollm2-timing llama32-1b-q4k; do
        timeout ${LB_LIMIT:-35} /tmp/llamacpp-vulkan/llama-bench -m /tmp/$f.gguf -ngl 99 -p 512 -n 128 -d 1024,8064 -r 2 \
          -o json > "$R/s5_lb_vulkan_$f.json" 2> /tmp/lb_$f.log; tail -1 /tmp/lb_$f.log; keep "$R/s5_lb_vulkan_$f.json"
      done
      python3 benchmarks/peer_table.py --ours $R/s5_smollm2.json $R/s5_llama1b.json \
        --llamacpp vulkan=$R/s5_lb_vulkan_smollm2-timing.json vulkan=$R/s5_lb_vulkan_llama32-1b-q4k.json --name s5_peers | tail -12
      keep $R/s5_peers.md $R/s5_peers.json ;;
    s5b)     # session 5, call 2: 128K every policy with per-label times, quest's split-target A/B, the
             # predictor's fast kernels A/B, the paged micro-benchmark against SDPA, the stream mat-vec sweep
      keep() { tar -rf "$OUT/s5b.tar" "$@" 2>/dev/null; }
      LIMIT=${LONG_LIMIT:-200} run python3 benchmarks/bench_long_context.py --layers 4 --contexts 131072 --budgets 2048 \
        --steps 10 --policies dense,streaming,triattention,tappa,quest,entmax,predictor --no-torch --name s5_long
      keep $R/s5_long.json
      LIMIT=${QAB_LIMIT:-80} run python3 benchmarks/bench_long_context.py --layers 4 --contexts 131072 --budgets 2048 \
        --steps 10 --policies quest,entmax --decode-workgroups 0,1024 --no-torch --name s5_long_quest_ab
      keep $R/s5_long_quest_ab.json
      LIMIT=${PAB_LIMIT:-60} run python3 benchmarks/bench_long_context.py --layers 4 --contexts 131072 --budgets 2048 \
        --steps 10 --policies predictor --env GRILLY_KV_PREDICTOR_FAST=1 --no-torch --name s5_long_predfast
      keep $R/s5_long_predfast.json
      LIMIT=${PAGED_LIMIT:-60} run python3 benchmarks/bench_paged_decode.py --contexts 131072
      cp $R/paged_decode.json $R/s5_paged_decode.json; keep $R/s5_paged_decode.json
      LIMIT=${SWEEP_LIMIT:-90} run python3 benchmarks/bench_quant_decode.py --pairs llama-3.2-1b:Q4_K,llama-3.1-8b:F16 \
        --tokens 1 --matvec rows,stream --stream-sweep --name s5_stream_ab
      keep $R/s5_stream_ab.json ;;
    s5c)     # session 5, call 3: NVIDIA tests after the float16-rounding fix (common.glsl f16_round), the
             # predictor diagnosis again, 128K every policy (clock warmed after the recording-building
             # steps), the predictor's fast kernels at 128K, the 1B file with the Q4_K stream default
             # against llama.cpp Vulkan; logs copied to $OUT as each step ends
      [ -f /tmp/llama32-1b-q4k.gguf ] || python3 benchmarks/timing_checkpoint.py llama32-1b /tmp/llama32-1b-q4k.gguf --matrix-type Q4_K
      GRILLY_KV_DEVICE=vulkan timeout ${TESTS_LIMIT:-150} python3 -m pytest -q -p no:cacheprovider \
        tests/test_predictor_twin_ops.py tests/test_kv_slot_attention.py tests/test_kv_slot_store_stats.py \
        tests/test_decode_attention.py tests/test_quest_one.py tests/test_model_slot_fuse.py \
        tests/test_model_matmul_q_stream.py ${TESTS_EXTRA:-} > "$OUT/tests_h200_s5c.log" 2>&1
      grep -E "FAILED|passed|failed" "$OUT/tests_h200_s5c.log" | tail -12
      timeout ${DIAG_LIMIT:-40} python3 benchmarks/diag_predictor_split.py --repeats 2 \
        --out "$OUT/diag_predictor_split_h200_fixed.json" 2>&1 | tail -8
      LIMIT=${LONG_LIMIT:-200} run python3 benchmarks/bench_long_context.py --layers 4 --contexts 131072 --budgets 2048 \
        --steps 8 --policies dense,streaming,triattention,tappa,quest,entmax,predictor --no-torch --name s5_long2
      cp $R/s5_long2.json "$OUT/"
      GRILLY_KV_PREDICTOR_FAST=1 LIMIT=${PAB_LIMIT:-60} run python3 benchmarks/bench_long_context.py --layers 4 \
        --contexts 131072 --budgets 2048 --steps 8 --policies predictor --no-torch --name s5_long2_predfast
      cp $R/s5_long2_predfast.json "$OUT/"
      LIMIT=${B1_LIMIT:-40} run python3 benchmarks/bench_model_decode.py -m /tmp/llama32-1b-q4k.gguf --contexts 1024,8064 \
        --policies dense,streaming:512 --weight-format native --steps 24 --chunk 512 --name s5_llama1b_default2
      cp $R/s5_llama1b_default2.json "$OUT/"
      [ -d /tmp/llamacpp-vulkan ] || tar -xJf .peers/llamacpp-vulkan.tar.xz -C /tmp
      timeout ${LB_LIMIT:-35} /tmp/llamacpp-vulkan/llama-bench -m /tmp/llama32-1b-q4k.gguf -ngl 99 -p 512 -n 128 \
        -d 1024,8064 -r 2 -o json > "$OUT/s5c_lb_vulkan_llama32-1b-q4k.json" 2> /tmp/lb.log; tail -1 /tmp/lb.log ;;
    s5d)     # session 5, call 4: the radix top-k's key-cap diagnosis, NVIDIA tests of the predictor twin
             # (fast attention now the default everywhere), 128K predictor rows (rank-count top-k; radix
             # top-k at key caps 1 and 8), SmolLM2 8K every policy at the current defaults
      [ -f /tmp/smollm2-timing.gguf ] || python3 benchmarks/timing_checkpoint.py smollm2 /tmp/smollm2-timing.gguf
      timeout ${DIAG_LIMIT:-60} python3 benchmarks/diag_topk_select.py --out "$OUT/diag_topk_select_h200.json" \
        > "$OUT/diag_topk_select_h200.log" 2>&1; grep -c " 0 wrong" "$OUT/diag_topk_select_h200.log"; grep -v " 0 wrong" "$OUT/diag_topk_select_h200.log" | tail -30
      GRILLY_KV_DEVICE=vulkan timeout ${TESTS_LIMIT:-90} python3 -m pytest -q -p no:cacheprovider \
        tests/test_predictor_device.py tests/test_predictor_twin_ops.py tests/test_model_matmul_q_stream.py \
        > "$OUT/tests_h200_s5d.log" 2>&1
      grep -E "FAILED|passed|failed" "$OUT/tests_h200_s5d.log" | tail -12
      LIMIT=${PAB_LIMIT:-120} run python3 benchmarks/bench_long_context.py --layers 4 --contexts 131072 --budgets 2048 \
        --steps 8 --policies predictor --env GRILLY_KV_PREDICTOR_FAST_TOPK=0,1 --env GRILLY_KV_TOPK_KEYS=1,8 \
        --no-torch --name s5_long_predictor
      cp $R/s5_long_predictor.json "$OUT/"
      LIMIT=${NEW_LIMIT:-90} run python3 benchmarks/bench_model_decode.py -m /tmp/smollm2-timing.gguf --contexts 8064 \
        --policies dense,streaming:512,quest:512,entmax:512,triattention:512,tappa:512,predictor:512 \
        --weight-format native --steps 24 --chunk 512 --name s5_smollm2_defaults
      cp $R/s5_smollm2_defaults.json "$OUT/" ;;
    s5e)     # session 5, call 5: the predictor at 128K and SmolLM2 8K with the radix top-k default (at most
             # 16 keys per invocation), and its NVIDIA tests
      [ -f /tmp/smollm2-timing.gguf ] || python3 benchmarks/timing_checkpoint.py smollm2 /tmp/smollm2-timing.gguf
      GRILLY_KV_DEVICE=vulkan timeout ${TESTS_LIMIT:-60} python3 -m pytest -q -p no:cacheprovider \
        tests/test_predictor_twin_ops.py tests/test_predictor_device.py -k "not runs_the_twin_like_the_reference_model" \
        > "$OUT/tests_h200_s5e.log" 2>&1
      grep -E "FAILED|passed|failed" "$OUT/tests_h200_s5e.log" | tail -8
      LIMIT=${PAB_LIMIT:-70} run python3 benchmarks/bench_long_context.py --layers 4 --contexts 131072 --budgets 2048 \
        --steps 8 --policies predictor,streaming --no-torch --name s5_long_predictor
      cp $R/s5_long_predictor.json "$OUT/"
      LIMIT=${NEW_LIMIT:-40} run python3 benchmarks/bench_model_decode.py -m /tmp/smollm2-timing.gguf --contexts 8064 \
        --policies dense,predictor:512 --weight-format native --steps 24 --chunk 512 --name s5_smollm2_predictor
      cp $R/s5_smollm2_predictor.json "$OUT/" ;;
    paged)
      run python3 benchmarks/bench_paged_decode.py --contexts 131072
      cp $R/paged_decode.json "$OUT/" ;;
    *) echo "unknown part $part" ;;
  esac
done
ls -la "$OUT"
