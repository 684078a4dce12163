-- The roles and the database for changecast, made by a managed database's admin role
-- (PostgreSQL 13+). That role needs CREATEROLE and CREATEDB, nothing more: RDS's
-- `rds_superuser` members and Cloud SQL's `cloudsqlsuperuser` members qualify; no step
-- needs a superuser. Run it as that role, connected to any database:
--
--   psql "$ADMIN_URL" -v database=app -v changecast_role=changecast \
--        -v owner_role=app_owner -v writer_role=app_writer -f sql/roles.sql
--
-- then give the roles passwords (`\password changecast`, ...), run `changecast migrate`
-- as the changecast role, and sql/grants.sql as the changecast role. Then, as this admin
-- role (PostgreSQL 15+), take back what the first migration needed:
--
--   psql "$ADMIN_URL" -d app -c 'revoke create on schema public from changecast'
--
-- The changecast role owns watch(), which table owners run with their own rights: it must
-- have no way to plant objects where other roles' queries look (CVE-2018-1058). The
-- service migrates and serves without it. See docs/roles.md.
--
-- Four roles, and what each may do:
--   admin            (you) creates the roles and the database, which it owns. With
--                    PostgreSQL 16+ it holds ADMIN OPTION on every role it creates.
--   changecast_role  runs `changecast migrate` and `serve`; owns schema changecast only.
--                    No superuser, no membership in any role, no application table.
--   owner_role       the application's migration role: owns its tables, and calls
--                    changecast.watch() on them.
--   writer_role      the application at run time: reads and writes the tables.

\set ON_ERROR_STOP on

create role :"changecast_role" login;
create role :"owner_role" login;
create role :"writer_role" login;

-- Owned by the admin, not by the service: a database's owner may drop it, and from
-- PostgreSQL 15 on owns its schema public, whose owner may drop any table in it.
create database :"database";
revoke all on database :"database" from public;
grant connect, temporary on database :"database" to :"changecast_role", :"owner_role", :"writer_role";
-- The service makes its schema (changecast); the application its own, if it wants one.
grant create on database :"database" to :"changecast_role", :"owner_role";

\connect :"database"
-- From PostgreSQL 15 on, schema public belongs to the database's owner (the admin here)
-- and nobody else may create in it. The application's tables go there, and so do the
-- example tables `changecast migrate` makes (profiles, tickets, agents): revoke the
-- changecast role's CREATE once they exist (see the top). Before 15, everyone may create
-- in public and its owner is the cluster's bootstrap superuser.
select current_setting('server_version_num')::int >= 150000 as public_is_ours \gset
\if :public_is_ours
grant create on schema public to :"changecast_role", :"owner_role";
\endif
