/* entity_cache--1.0--1.1.sql */

\echo Use "ALTER EXTENSION entity_cache UPDATE TO '1.1'" to load this file. \quit

-- Every change to the objects of 1.0 that entity_cache--1.1.sql makes is
-- made here too, so that an updated installation has exactly the objects
-- of a fresh one (t/005_upgrade.pl compares them).  Queued rows stay.
