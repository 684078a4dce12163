-- The key that authenticates cursors (src/journal/cursor.rs): a client may hold and
-- return a cursor, not make or alter one. Kept here so that every instance on this
-- database shares it with nothing to configure, whatever signs subscriber tokens.
--
-- 48 bytes from three version-4 UUIDs: gen_random_uuid() draws from pg_strong_random(),
-- the server's cryptographically strong source (122 random bits each, 366 in all).
-- Readable by the owner of the schema (the service's role) only: whoever reads it can
-- mint cursors for any tenant.
create table changecast.cursor_key (
    singleton boolean primary key default true check (singleton),
    key       bytea not null default decode(
        replace(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text,
                '-', ''),
        'hex')
);
insert into changecast.cursor_key default values;
revoke all on changecast.cursor_key from public;
