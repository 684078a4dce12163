-- changecast: `open` is a reserved topic (API.md §8).
--
-- An EventSource dispatches an SSE event named `open` to the page's `onopen` handler, as
-- if the connection had just opened; `message` and `error` were reserved already.
-- `create or replace` keeps the function's grants.

/*
 * Function: changecast.publish(tenant_id, topic, payload)
 * Parameters:
 *   tenant_id  the tenant whose subscribers get the event (not null, not empty)
 *   topic      [a-z][a-z0-9_.:-]*, at most 63 characters, not a built-in event's name
 *   payload    any JSON value (default {})
 * Returns: void. The event is journalled in the caller's transaction: delivered when it
 *   commits, never when it rolls back. Rings like a row change (no NOTIFY while the
 *   service drains the journal anyway).
 * Security definer (callers need no rights on the journal); executable only where
 *   granted (sql/grants.sql): whoever may publish may address any tenant.
 */
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
    insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
    values (publish.tenant_id, publish.topic, 'published', '', publish.payload);
    perform changecast.ring();
end
$$;

