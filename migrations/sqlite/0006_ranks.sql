-- Distributed runs: the number of ranks, the length of every `rank_*` statistic's vector
-- (per-rank step time and throughput), where other layer statistics have one value per block.
ALTER TABLE runs ADD COLUMN ranks INTEGER;
