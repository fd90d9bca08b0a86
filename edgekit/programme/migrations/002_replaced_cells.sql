-- A field retaken sharper replaces the one counted before (edgekit screening schema 5): its cells
-- stay on the station with status 'replaced'. A station may change the status and reason of its own
-- records (row-level security as for every other row), nothing else of them.
GRANT UPDATE (status, reason) ON records TO edgekit_station;
