#!/usr/bin/env bash
# A streaming replica: on first start, clone the primary with pg_basebackup -R, then run.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup -h "$PRIMARY_HOST" -U replicator \
      -D "$PGDATA" -R -X stream -C -S replica1 -c fast; do
    echo "waiting for the primary..."; rm -rf "${PGDATA:?}"/*; sleep 2
  done
  chmod 0700 "$PGDATA"
fi
exec postgres -c hot_standby=on -c hot_standby_feedback=on
