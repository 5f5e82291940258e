-- Runs once, on an empty data directory, as the superuser (docker-entrypoint-initdb.d).
-- The ledger needs three roles before `ledgerflow migrate` runs, because the migrations grant to
-- the app and reader roles: ledgerflow_owner owns the schema and migrates; ledgerflow_app
-- (workers, relay) owns nothing, so the ledger's grants and revokes bind it
-- (docs/decisions/ledger-invariants.md); ledgerflow_reader (the read API) may only SELECT what
-- the migrations grant it. The same roles `ledgerflow stack up` creates; passwords come from the
-- container's environment.
\set ON_ERROR_STOP on
\getenv owner_password LEDGERFLOW_OWNER_PASSWORD
\getenv app_password LEDGERFLOW_APP_PASSWORD
\getenv reader_password LEDGERFLOW_READER_PASSWORD

CREATE ROLE ledgerflow_owner LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER PASSWORD :'owner_password';
CREATE ROLE ledgerflow_app LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER PASSWORD :'app_password';
CREATE ROLE ledgerflow_reader LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER PASSWORD :'reader_password';
CREATE DATABASE ledgerflow OWNER ledgerflow_owner;
