-- The example domain of the dashboard and the tests: profiles, tickets, agents.

create table public.profiles (
    id                     uuid primary key default gen_random_uuid(),
    tenant_id              text not null,
    tag                    text,
    name                   text,
    is_default             boolean not null default false,
    active_for_consumption boolean not null default false,
    config                 jsonb not null default '{}',
    updated_at             timestamptz not null default now()
);

create table public.tickets (
    id          uuid primary key default gen_random_uuid(),
    tenant_id   text not null,
    project_id  text,
    title       text not null,
    state       text not null default 'open',
    assignee    text,
    body        text,
    updated_at  timestamptz
);

create table public.agents (
    id              uuid primary key default gen_random_uuid(),
    tenant_id       text not null,
    name            text not null,
    status          text not null default 'idle',
    last_heartbeat  timestamptz,
    updated_at      timestamptz
);

create index profiles_tenant on public.profiles (tenant_id);
create index tickets_tenant on public.tickets (tenant_id);
create index agents_tenant on public.agents (tenant_id);

select changecast.watch('public.profiles', 'profile');
select changecast.watch('public.tickets', 'ticket');
select changecast.watch('public.agents', 'agent');
