# Shared by scripts/demo.sh and scripts/test-compat.sh: the database each
# recreates from scratch, and psql against it. The caller sets PG (libpq
# keywords of the server), DBNAME and WRITE_ROLE before sourcing this file.

export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"

psql_db() { psql "$PG dbname=$DBNAME" -X -q -v ON_ERROR_STOP=1 "$@"; }

# Drops and recreates $DBNAME, and creates $WRITE_ROLE (NOLOGIN: the relay
# switches to it per write) unless it exists. Roles are cluster-wide, so a
# concurrent run may create it first: that is not an error.
recreate_db() {
  psql "$PG dbname=postgres" -X -q -v ON_ERROR_STOP=1 <<SQL
DROP DATABASE IF EXISTS $DBNAME WITH (FORCE);
CREATE DATABASE $DBNAME;
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$WRITE_ROLE') THEN
    CREATE ROLE $WRITE_ROLE NOLOGIN;
  END IF;
EXCEPTION WHEN duplicate_object THEN NULL;
END \$\$;
SQL
}
