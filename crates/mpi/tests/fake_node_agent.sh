#!/bin/sh
# An rsh agent for Open MPI that makes one machine look like several nodes: mpirun calls
# it as `agent [options] HOST COMMAND...` to start its daemon on HOST; it runs COMMAND
# here instead, with a shared-memory (vader) backing directory of HOST's own, under
# $MPROC_MPI_FAKE_NODES_DIR, so the fake nodes never share segment files.
while [ $# -gt 0 ]; do
  case "$1" in
    -*) shift ;;
    *) break ;;
  esac
done
host="$1"
shift
dir="${MPROC_MPI_FAKE_NODES_DIR:?MPROC_MPI_FAKE_NODES_DIR is not set}/node-$host"
mkdir -p "$dir"
export OMPI_MCA_btl_vader_backing_directory="$dir"
exec sh -c "$*"
