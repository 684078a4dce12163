-- Empties what benchmark runs write, so every run starts from the same journal size.
-- Run only while no changecast service is attached to the database.
truncate public.tickets, bench.plain, bench.journalled, bench.watched, bench.bridge,
         changecast.change_log;
