"""The DuckDB anchor of segmentation's recompute bench: the same RFM scores and segments
from the same facts, in SQL.

    cargo bench -p winback-segmentation --bench recompute -- --customers 1000000 --write-csv /tmp/facts.csv
    pip install duckdb
    python3 scripts/duckdb_recompute.py /tmp/facts.csv [rounds]

R and M are mid-rank quintiles (ties share a score, as segmentation's rule), F takes the
default purchase-day thresholds (2, 3, 4, 6), and the segment is the default R×F grid.
Prints, per round, the time to load the CSV and the time to score and count segments.
"""

import statistics
import sys
import time

import duckdb

SCORE = """
CREATE OR REPLACE TABLE scored AS
WITH ranked AS (
  SELECT customer_id, days_since_last, purchase_days, total_spent,
    -- mid-rank percentile, as segmentation: (below + equal / 2) / n
    (RANK() OVER (ORDER BY days_since_last DESC) - 1
       + (COUNT(*) OVER (PARTITION BY days_since_last)) / 2.0) / COUNT(*) OVER () AS pr,
    (RANK() OVER (ORDER BY total_spent) - 1
       + (COUNT(*) OVER (PARTITION BY total_spent)) / 2.0) / COUNT(*) OVER () AS pm
  FROM facts WHERE purchase_days > 0
), scores AS (
  SELECT customer_id,
    LEAST(FLOOR(5 * pr), 4)::INT + 1 AS r,
    CASE WHEN purchase_days >= 6 THEN 5 WHEN purchase_days >= 4 THEN 4
         WHEN purchase_days >= 3 THEN 3 WHEN purchase_days >= 2 THEN 2 ELSE 1 END AS f,
    LEAST(FLOOR(5 * pm), 4)::INT + 1 AS m
  FROM ranked
)
SELECT customer_id, r, f, m,
  CASE
    WHEN r = 5 AND f >= 4 THEN 'champions'
    WHEN r BETWEEN 3 AND 4 AND f >= 4 THEN 'loyal'
    WHEN r >= 4 AND f BETWEEN 2 AND 3 THEN 'potential_loyalists'
    WHEN r = 5 AND f = 1 THEN 'new'
    WHEN r = 4 AND f = 1 THEN 'promising'
    WHEN r = 3 AND f = 3 THEN 'need_attention'
    WHEN r = 3 AND f <= 2 THEN 'about_to_sleep'
    WHEN r <= 2 AND f BETWEEN 3 AND 4 THEN 'at_risk'
    WHEN r <= 2 AND f = 5 THEN 'cant_lose_them'
    ELSE 'hibernating'
  END AS segment
FROM scores
"""


def main() -> None:
    path = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    loads, scores = [], []
    for _ in range(rounds):
        con = duckdb.connect()
        started = time.perf_counter()
        con.execute(f"CREATE TABLE facts AS SELECT * FROM read_csv_auto('{path}')")
        loaded = time.perf_counter()
        con.execute(SCORE)
        sizes = con.execute(
            "SELECT segment, COUNT(*) FROM scored GROUP BY segment ORDER BY segment"
        ).fetchall()
        done = time.perf_counter()
        loads.append(loaded - started)
        scores.append(done - loaded)
        con.close()
    n = sum(count for _, count in sizes)
    print(f"duckdb {duckdb.__version__}: {n} buyers scored, {len(sizes)} segments")
    print(
        f"score + segment sizes: median {statistics.median(scores):.2f} s; "
        f"with loading: median {statistics.median(l + s for l, s in zip(loads, scores)):.2f} s"
    )


if __name__ == "__main__":
    main()
