"""The client's side of /metrics: samples by name and labels, sums, means and differences of two scrapes."""

import pytest

from common.serving.metrics import MetricSamples, ServingMetrics, parse_metrics


def scrape(metrics: ServingMetrics) -> MetricSamples:
    return parse_metrics(metrics.render().decode())  # the text GET /metrics answers


def test_samples_are_found_by_name_and_labels_and_summed_over_labels():
    m = ServingMetrics()
    m.requests.labels(endpoint="/v1/embeddings", status="200").inc(3)
    m.requests.labels(endpoint="/v1/embeddings", status="429").inc()
    m.requests.labels(endpoint="/healthz", status="200").inc()
    samples = scrape(m)
    assert samples.get("hpai_requests_total", endpoint="/v1/embeddings", status="200") == 3
    assert samples.get("hpai_requests_total", endpoint="/v1/embeddings") == 0, "exactly these labels, or nothing"
    assert samples.get("hpai_requests_total", endpoint="/nowhere", status="200") == 0
    assert samples.total("hpai_requests_total", endpoint="/v1/embeddings") == 4
    assert samples.total("hpai_requests_total", status="200") == 4
    assert samples.total("hpai_requests_total") == 5


def test_what_grew_between_two_scrapes_and_its_means():
    m = ServingMetrics()
    m.batch_done(rows=4, padded_tokens=40, queue_seconds=[0.1, 0.3], compute_seconds=0.5)
    before = scrape(m)
    m.batch_done(rows=2, padded_tokens=30, queue_seconds=[0.2], compute_seconds=1.5)
    after = scrape(m)
    assert after.mean("hpai_batch_size") == 3 and after.mean("hpai_queue_duration_seconds") == pytest.approx(0.2)
    grew = after - before
    assert grew.get("hpai_batch_size_count") == 1 and grew.mean("hpai_compute_duration_seconds") == 1.5
    assert grew.get("hpai_batch_size_bucket", le="2.0") == 1, "histogram buckets are samples too"
    assert (before + grew).values == pytest.approx(after.values)
    assert MetricSamples().mean("hpai_batch_size") is None, "no observations: no mean"
