#!/usr/bin/env bash
# bash bench/ab-seed.sh RUNS SOURCE VAULT TREE...: see bench/ab.sh.
exec bash "$(dirname "$0")/ab.sh" seed "$@"
