#!/usr/bin/env bash
# make mutants: each file in mutants/*.patch is a deliberate bug. For each, a
# fresh copy of the tree gets the patch and runs the tests its "# test:" lines
# name (go test arguments, one package pattern and -run each); the mutant is
# KILLED when a test fails, SURVIVED when they all pass (the suite cannot see
# that bug: this script then fails), BROKEN when the patch does not apply or
# the code does not build (also a failure: fix the patch).
#
#   MUTANTS=regexp   only the mutants whose file name matches
#   MUTANTS_SHARD=i/n  only every n-th mutant starting at i (CI rotates)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ln -s "$root/../shared" "$work/shared"
mkdir -p "$work/base"
(cd "$root" && git ls-files -z | xargs -0 tar cf - 2>/dev/null) | tar xf - -C "$work/base"
# Untracked work in progress counts too (patches are made against the tree as it is).
shopt -s nullglob
all=("$root"/mutants/*.patch)
sel=()
i=0
for p in "${all[@]}"; do
  name=$(basename "$p" .patch)
  if [ -n "${MUTANTS:-}" ] && ! [[ $name =~ $MUTANTS ]]; then continue; fi
  if [ -n "${MUTANTS_SHARD:-}" ]; then
    k=${MUTANTS_SHARD%/*}; n=${MUTANTS_SHARD#*/}
    if [ $((i % n)) -ne "$k" ]; then i=$((i+1)); continue; fi
  fi
  i=$((i+1))
  sel+=("$p")
done
[ ${#sel[@]} -gt 0 ] || { echo "mutants: none selected"; exit 1; }
survived=0 broken=0 killed=0
for p in "${sel[@]}"; do
  name=$(basename "$p" .patch)
  rm -rf "$work/main"
  cp -a "$work/base" "$work/main"
  if ! (cd "$work/main" && patch -s -p1 < "$p" >/dev/null); then
    echo "BROKEN   $name (patch does not apply)"; broken=$((broken+1)); continue
  fi
  start=$(date +%s)
  out="$work/$name.out"
  status=pass
  while IFS= read -r line; do
    args=${line#\# test: }
    (cd "$work/main" && eval "go test -count=1 -timeout 10m $args") > "$out" 2>&1
    if grep -q -e '\[build failed\]' -e '\[setup failed\]' -e 'no tests to run' "$out"; then status=broken; break; fi
    if grep -q -e '^--- FAIL' -e '^FAIL' -e 'panic:' "$out"; then status=killed; break; fi
  done < <(grep '^# test: ' "$p")
  secs=$(( $(date +%s) - start ))
  case $status in
    killed) echo "KILLED   $name (${secs}s)"; killed=$((killed+1)) ;;
    broken) echo "BROKEN   $name (does not build)"; sed -n 1,20p "$out"; broken=$((broken+1)) ;;
    *) echo "SURVIVED $name (${secs}s): its tests pass with the bug in"; survived=$((survived+1)) ;;
  esac
done
echo "mutants: $killed killed, $survived survived, $broken broken of ${#sel[@]}"
[ $survived -eq 0 ] && [ $broken -eq 0 ]
