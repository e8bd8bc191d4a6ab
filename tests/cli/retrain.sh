#!/usr/bin/env bash
# `ftune retrain`, `ftune promote` and `ftune rollback` on a model repository made from the
# fixture BertForSequenceClassification: a challenger promoted (margin -1), one kept out
# (margin 1), the report's challenger section equal to `ftune eval` of the same version on the
# same held-out file, history.tsv, rollbacks two promotions back, and the errors; then a
# BertForTokenClassification (NER on CoNLL sentences, gated on seqeval's entity F1) and a
# LlamaForSequenceClassification made from the tiny Llama fixture.
#   tests/cli/retrain.sh FTUNE_BINARY FIXTURE_DIR TOKEN_FIXTURE_DIR LLAMA_FIXTURE_DIR SCRATCH_DIR
set -euo pipefail
ftune=$1 fixture=$2 token_fixture=$3 llama_fixture=$4 work=$5
rm -rf "$work"
mkdir -p "$work/repo/versions"
cp -r "$fixture" "$work/repo/versions/v1"
fail() { echo "FAILED: $*" >&2; exit 1; }

# labelled sentences in the fixture's tiny vocabulary
make_rows() {  # make_rows N OFFSET: N rows cycling through three labelled patterns
    local i
    echo -e "sentence\tlabel"
    for ((i = 0; i < $1; i++)); do
        case $(( (i + $2) % 3 )) in
            0) echo -e "the cafe was great\tpositive" ;;
            1) echo -e "john lives in berlin\tneutral" ;;
            2) echo -e "where is the river ?\tnegative" ;;
        esac
    done
}
make_rows 12 0 >"$work/new.tsv"
make_rows 30 1 >"$work/old.tsv"
make_rows 9 2 >"$work/holdout.tsv"

"$ftune" promote --model "$work/repo" --version v1 | grep -qx "promoted v1" || fail "promote v1"
common=(--new "$work/new.tsv" --replay "$work/old.tsv" --replay-ratio 0.5 --holdout "$work/holdout.tsv"
        --epochs 1 --batch-size 4 --lr 1e-3)

# a challenger that any result promotes
"$ftune" retrain --model "$work/repo" "${common[@]}" --version v2 --margin -1 >"$work/out2.txt" 2>"$work/err2.txt" \
    || { cat "$work/err2.txt"; fail "retrain v2"; }
grep -q "decision: promoted" "$work/out2.txt" || fail "v2 not promoted"
grep -q "trained on .*new.tsv + 6 replayed rows" "$work/err2.txt" || fail "replay count (12 x 0.5 = 6)"
[[ $(readlink "$work/repo/current") == versions/v2 ]] || fail "current is not v2"
[[ -f $work/repo/reports/v2.md ]] || fail "no report"
[[ ! -e $work/repo/.retrain/v2 ]] || fail "training data left behind"
# the report's challenger section is `ftune eval`'s report of v2 on the held-out file
"$ftune" eval --model "$work/repo/versions/v2" --data "$work/holdout.tsv" >"$work/eval_v2.txt"
sed -n '/^## challenger/,$p' "$work/repo/reports/v2.md" | sed '1,3d;$d' >"$work/report_v2.txt"
diff "$work/eval_v2.txt" "$work/report_v2.txt" || fail "the report's challenger section differs from ftune eval"
"$ftune" eval --model "$work/repo/versions/v1" --data "$work/holdout.tsv" >"$work/eval_v1.txt"
sed -n '/^## champion/,/^## challenger/p' "$work/repo/reports/v2.md" | sed '1,3d' | head -n -3 >"$work/report_v1.txt"
diff "$work/eval_v1.txt" "$work/report_v1.txt" || fail "the report's champion section differs from ftune eval"

# a challenger that no result promotes: kept, saved, not in service
"$ftune" retrain --model "$work/repo" "${common[@]}" --version v3 --margin 1 >"$work/out3.txt" 2>/dev/null
grep -q "decision: kept out of service" "$work/out3.txt" || fail "v3 not kept out"
[[ $(readlink "$work/repo/current") == versions/v2 ]] || fail "current moved for v3"
[[ -f $work/repo/versions/v3/config.json ]] || fail "v3 not saved"
cut -f2,3,4 "$work/repo/history.tsv" | tail -n 3 | tr '\t' ' ' >"$work/history.txt"
printf 'promote v1 \nretrain-promoted v2 v1\nretrain-kept v3 v2\n' | diff - "$work/history.txt" || fail "history"
"$ftune" promote --model "$work/repo" | tr -d ' ' | tr '\n' ' ' | grep -qx "v1 \*v2 v3 " || fail "listing"

# rollbacks: two promotions back, then nothing before v1
"$ftune" rollback --model "$work/repo" | grep -qx "rolled back from v2 to v1" || fail "rollback to v1"
[[ $(readlink "$work/repo/current") == versions/v1 ]] || fail "current is not v1"
if "$ftune" rollback --model "$work/repo" 2>"$work/err.txt"; then fail "a rollback past v1"; fi
grep -q "names no version in service before v1" "$work/err.txt" || fail "rollback error"
"$ftune" rollback --model "$work/repo" --to v3 | grep -qx "rolled back from v1 to v3" || fail "--to v3"

# errors: an existing version, an option retrain chooses, a plain model directory
if "$ftune" retrain --model "$work/repo" "${common[@]}" --version v2 2>"$work/err.txt"; then fail "v2 again"; fi
grep -q "exists already" "$work/err.txt" || fail "existing version error"
if "$ftune" retrain --model "$work/repo" "${common[@]}" --out x 2>"$work/err.txt"; then fail "--out"; fi
grep -q "ftune retrain chooses it" "$work/err.txt" || fail "--out error"
if "$ftune" retrain --model "$work/repo" "${common[@]}" --peft lora 2>"$work/err.txt"; then fail "--peft"; fi
grep -q "a challenger is a whole model" "$work/err.txt" || fail "--peft error"
if "$ftune" retrain --model "$work/repo" "${common[@]}" --seed -1 2>"$work/err.txt"; then fail "--seed -1"; fi
grep -q "a seed is a whole number" "$work/err.txt" || fail "--seed error"
if "$ftune" retrain --model "$fixture" "${common[@]}" 2>"$work/err.txt"; then fail "plain dir"; fi
grep -q "is not a model repository" "$work/err.txt" || fail "plain directory error"

# a token classifier: CoNLL sentences, replayed by sentence, gated on entity F1
mkdir -p "$work/ner/versions"
cp -r "$token_fixture" "$work/ner/versions/t1"
"$ftune" promote --model "$work/ner" --version t1 >/dev/null
make_sentences() {  # make_sentences N OFFSET: N sentences cycling through three patterns
    local i
    for ((i = 0; i < $1; i++)); do
        case $(( (i + $2) % 3 )) in
            0) printf 'john B-PER\nlives O\nin O\nparis B-LOC\n. O\n\n' ;;
            1) printf 'where O\nis O\nberlin B-LOC\n? O\n\n' ;;
            2) printf 'hello O\njohn B-PER\n! O\n\n' ;;
        esac
    done
}
make_sentences 10 0 >"$work/new.conll"
make_sentences 20 1 >"$work/old.conll"
make_sentences 6 2 >"$work/holdout.conll"
"$ftune" retrain --model "$work/ner" --new "$work/new.conll" --replay "$work/old.conll" --replay-ratio 0.3 \
    --holdout "$work/holdout.conll" --epochs 1 --batch-size 4 --lr 1e-3 --version t2 --margin -1 \
    >"$work/ner_out.txt" 2>"$work/ner_err.txt" || { cat "$work/ner_err.txt"; fail "retrain t2"; }
grep -q "champion t1 (ner)" "$work/ner_err.txt" || fail "the task is not read from the champion"
grep -q "trained on .*new.conll + 3 replayed sentences" "$work/ner_err.txt" || fail "replay count (10 x 0.3 = 3)"
grep -q "^| entity F1 (seqeval) |" "$work/ner_out.txt" || fail "no entity F1 row"
grep -q "decision: promoted (entity F1 " "$work/ner_out.txt" || fail "t2 not promoted on entity F1"
[[ $(readlink "$work/ner/current") == versions/t2 ]] || fail "current is not t2"
grep -q '"BertForTokenClassification"' "$work/ner/versions/t2/config.json" || fail "t2 is not a token classifier"
"$ftune" eval --model "$work/ner/versions/t2" --data "$work/holdout.conll" >"$work/eval_t2.txt"
sed -n '/^## challenger/,$p' "$work/ner/reports/t2.md" | sed '1,3d;$d' >"$work/report_t2.txt"
diff "$work/eval_t2.txt" "$work/report_t2.txt" || fail "the NER report's challenger section differs from ftune eval"
"$ftune" retrain --model "$work/ner" --new "$work/new.conll" --holdout "$work/holdout.conll" \
    --epochs 1 --version t3 --metric loss --margin 1000 >"$work/ner_out3.txt" 2>/dev/null || fail "retrain t3"
grep -q "decision: kept out of service (loss " "$work/ner_out3.txt" || fail "t3 not kept out on loss"
# the gate's direction: t2 retrained again from t1 (training is deterministic) gains exactly
# what t2 gained in loss; a margin just under the gain promotes it, just over keeps it out
"$ftune" rollback --model "$work/ner" --to t1 >/dev/null
gain=$(awk -F'|' '$2 ~ /^ loss / { printf "%.6f", $3 - $4 }' "$work/ner_out.txt")
[[ -n $gain ]] || fail "no loss row in t2's report"
under=$(awk -v g="$gain" 'BEGIN { printf "%.6f", g - 0.01 }')
over=$(awk -v g="$gain" 'BEGIN { printf "%.6f", g + 0.01 }')
again=(--new "$work/new.conll" --replay "$work/old.conll" --replay-ratio 0.3 --holdout "$work/holdout.conll"
       --epochs 1 --batch-size 4 --lr 1e-3 --metric loss)
"$ftune" retrain --model "$work/ner" "${again[@]}" --version t5 --margin "$over" >"$work/t5.txt" 2>/dev/null
grep -q "decision: kept out of service" "$work/t5.txt" || fail "t5 (margin over the gain $gain) was promoted"
"$ftune" retrain --model "$work/ner" "${again[@]}" --version t6 --margin "$under" >"$work/t6.txt" 2>/dev/null
grep -q "decision: promoted" "$work/t6.txt" || fail "t6 (margin under the gain $gain) was kept out"
if "$ftune" retrain --model "$work/ner" --new "$work/new.conll" --holdout "$work/holdout.conll" \
    --version t4 --task mlm 2>"$work/err.txt"; then fail "an mlm retrain"; fi
grep -q "ftune retrain gates classifiers" "$work/err.txt" || fail "unsupported task error"

# a decoder's sequence classifier (the last token), its vocabulary letters without spaces
mkdir -p "$work/llama" "$work/dec/versions"
cp "$llama_fixture"/tied/* "$llama_fixture"/cli/tokenizer*.json "$work/llama/"
printf 'sentence\tlabel\nabc\tpositive\nmnop\tnegative\nabd\tpositive\nmnq\tnegative\n' >"$work/dec.tsv"
"$ftune" train --task classify --model "$work/llama" --train "$work/dec.tsv" --out "$work/dec/versions/d1" \
    --epochs 1 --batch-size 2 2>/dev/null || fail "train the decoder classifier"
"$ftune" promote --model "$work/dec" --version d1 >/dev/null
"$ftune" retrain --model "$work/dec" --new "$work/dec.tsv" --holdout "$work/dec.tsv" --epochs 1 \
    --batch-size 2 --version d2 --margin -1 >"$work/dec_out.txt" 2>/dev/null || fail "retrain d2"
grep -q "decision: promoted (accuracy " "$work/dec_out.txt" || fail "d2 not promoted"
grep -q '"LlamaForSequenceClassification"' "$work/dec/versions/d2/config.json" || fail "d2 is not a Llama classifier"
"$ftune" eval --model "$work/dec/versions/d2" --data "$work/dec.tsv" >"$work/eval_d2.txt"
sed -n '/^## challenger/,$p' "$work/dec/reports/d2.md" | sed '1,3d;$d' >"$work/report_d2.txt"
diff "$work/eval_d2.txt" "$work/report_d2.txt" || fail "the decoder report's challenger section differs from ftune eval"
echo "retrain, promote and rollback: all checks passed"
