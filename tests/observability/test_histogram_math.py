import math

from histogram_math import histogram_quantile

BUCKETS = [(1.0, 2.0), (2.0, 6.0), (5.0, 10.0), (math.inf, 10.0)]


def test_interpolates_inside_the_bucket_holding_the_rank():
    assert histogram_quantile(0.5, BUCKETS) == 1.0 + (5 - 2) / (6 - 2)
    assert histogram_quantile(0.1, BUCKETS) == 0.5
    assert histogram_quantile(1.0, BUCKETS) == 2.0 + 3.0 * (10 - 6) / (10 - 6)


def test_a_rank_in_the_inf_bucket_gives_the_last_finite_bound():
    assert histogram_quantile(0.99, [(1.0, 1.0), (math.inf, 2.0)]) == 1.0


def test_an_empty_histogram_has_no_quantile():
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))
