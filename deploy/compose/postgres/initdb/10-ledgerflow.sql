-- Runs once, on an empty data directory, as the superuser (docker-entrypoint-initdb.d).
-- The ledger needs two roles before `ledgerflow migrate` runs, because the migration grants to
-- the app role: ledgerflow_owner owns the schema and migrates; ledgerflow_app (workers, relay)
-- owns nothing, so the ledger's grants and revokes bind it (docs/decisions/ledger-invariants.md).
-- The same roles `ledgerflow stack up` creates; passwords come from the container's environment.
\set ON_ERROR_STOP on
\getenv owner_password LEDGERFLOW_OWNER_PASSWORD
\getenv app_password LEDGERFLOW_APP_PASSWORD

CREATE ROLE ledgerflow_owner LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER PASSWORD :'owner_password';
CREATE ROLE ledgerflow_app LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER PASSWORD :'app_password';
CREATE DATABASE ledgerflow OWNER ledgerflow_owner;
