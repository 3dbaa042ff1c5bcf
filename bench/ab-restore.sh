#!/usr/bin/env bash
# bash bench/ab-restore.sh RUNS VAULT ITEM TREE...: see bench/ab.sh.
exec bash "$(dirname "$0")/ab.sh" restore "$@"
