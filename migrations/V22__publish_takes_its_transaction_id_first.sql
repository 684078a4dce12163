-- changecast.publish() takes its transaction's id before its row's id.
--
-- The tailer reads only the journal partitions that can hold rows it has not read yet
-- (src/journal/id_floor.rs). Its bound rests on one rule: every journal row is written
-- by a transaction that had its transaction id before it took the row's id from the
-- sequence. The capture triggers keep it (they run after the row they capture was
-- written, which took the transaction's id). publish() may be a transaction's first
-- write: its INSERT would take the row's id from the sequence (the first column's
-- default) before writing the row, which takes the transaction's id. It now takes the
-- transaction's id first; otherwise it is unchanged (V11).

create or replace function changecast.publish(tenant_id text, topic text, payload jsonb default '{}')
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    if tenant_id is null or tenant_id = '' then
        raise exception 'changecast.publish: tenant_id must not be null or empty'
            using errcode = 'null_value_not_allowed';
    end if;
    if topic is null or topic !~ '^[a-z][a-z0-9_.:-]{0,62}$' then
        raise exception 'changecast.publish: topic % must match [a-z][a-z0-9_.:-]* (at most 63 characters)',
                coalesce(quote_literal(topic), 'NULL')
            using errcode = 'invalid_parameter_value';
    end if;
    -- Names the transports use for their own events, and those an EventSource uses for
    -- its own (`message`, `open`, `error`): an application event by such a name would be
    -- mistaken for one (an `open` event would fire the page's `onopen`).
    if topic in ('resource_change', 'app_event', 'resync', 'auth_expired', 'reconnect', 'stats',
                 'heartbeat', 'keepalive', 'ping', 'pong', 'error', 'message', 'subscribe',
                 'unsubscribe', 'connection_established', 'subscription_confirmed', 'open') then
        raise exception 'changecast.publish: topic "%" is reserved for a built-in event', topic
            using errcode = 'invalid_parameter_value';
    end if;
    if payload is null then
        raise exception 'changecast.publish: payload must not be null (use ''{}'')'
            using errcode = 'null_value_not_allowed';
    end if;
    -- The transaction's id before the row's: see the header.
    perform pg_current_xact_id();
    insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
    values (publish.tenant_id, publish.topic, 'published', '', publish.payload);
    perform changecast.ring();
end
$$;
