#!/usr/bin/env bash
# test_layering.sh: the folders below trainer/ (checkpoint/, data/, comm/, kernels/) include
# nothing from trainer/ but its base layer (common.h, log.h, param_table.h), and the base layer
# includes nothing else from trainer/. Fails naming each offending include.
set -u
: "${SRC:?}"
cd "$SRC"
bad=0
base='common\.h|log\.h|param_table\.h'
while IFS= read -r line; do
  echo "FAIL: a lower folder reaches into trainer/: $line"; bad=1
done < <(grep -rnE '#include "(\.\./)?trainer/' checkpoint data comm kernels --include='*.[ch]' \
           --include='*.cu' --include='*.cuh' | grep -vE "trainer/($base)\"")
for f in trainer/common.h trainer/log.h trainer/param_table.h trainer/common.c \
         trainer/param_table.c; do
  while IFS= read -r line; do
    echo "FAIL: the base layer includes more of trainer/: $f: $line"; bad=1
  done < <(grep -nE '#include "' "$f" | grep -vE "\"($base)\"|\"(\.\./)?trainer/($base)\"")
done
[ $bad -eq 0 ] && echo "layering: ok"
exit $bad
