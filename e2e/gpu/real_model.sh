#!/usr/bin/env bash
# The real SmolLM2-135M-Instruct GGUF (98 MB) on the GPU: its greedy answers in bf16 and FP8
# against the CPU's (real_model.py). The file is over one call's carry, so it travels in parts
# across warm calls: each call copies the parts it carries (e2e/gpu/parts/, git-ignored) to
# /tmp/fused-parts; the call with CHECK=1 joins them, verifies the digest and runs the check.
# Here:  split -b 30M -d ~/.cache/fusedmodel/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smol.part
#        then carry one or two /tmp/smol.partNN per call as e2e/gpu/parts/.
# There: OUT=<dir> bash e2e/gpu/real_model.sh            (parts only)
#        CHECK=1 OUT=<dir> bash e2e/gpu/real_model.sh    (the last part, then the check)
here="$(cd "$(dirname "$0")" && pwd)"
parts=/tmp/fused-parts
mkdir -p "$parts"
[ -d "$here/parts" ] && cp "$here"/parts/* "$parts"/ 2>/dev/null
echo "parts on the machine: $(ls "$parts" | tr '\n' ' ')"
[ "${CHECK:-0}" = 1 ] || exit 0
source "$here/env.sh"
gguf=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf
cat "$parts"/smol.part* > "$gguf"
digest="$(sha256sum "$gguf" | cut -d' ' -f1)"
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ "$digest" != "$want" ]; then echo "real_model.sh: digest $digest, not $want (a part is missing?)"; exit 2; fi
python3 "$here/real_model.py" check "$bin/fused-daemon" "$gguf" "$here/smollm2_cpu_answers.json" 2>&1 | tee "$out/real-model.txt"
status=${PIPESTATUS[0]}
echo; grep REAL-MODEL "$out/real-model.txt"
exit "$status"
