"""Two service replicas sharing one PostgreSQL query log: a query answered by one can be judged on the other."""

from __future__ import annotations

import base64

import requests
from PIL import Image
from serve_helpers import build_service, start_server

from isacir.edge.payload import encode_payload

KEY = {"X-API-Key": "test-key"}


def test_two_replicas_share_the_query_log_and_the_pilot(tmp_path, openclip_fnd, postgres):
    from isacir.serve import ServeSettings, ServiceState, create_app

    url = postgres.new_database()
    _, first, images = build_service(tmp_path, openclip_fnd)
    states = [
        ServiceState(
            first.gallery,
            first.foundation,
            first.query_encoder,
            ServeSettings(api_keys=("test-key",), feedback_db=url),
        )
        for _ in range(2)
    ]
    servers = [start_server(create_app(s)) for s in states]
    try:
        tokens = first.retriever.pseudo_tokens(Image.open(images[0]))
        payload = base64.b64encode(encode_payload(tokens[0].numpy(), first.qe_fingerprint, "fp16")).decode()
        asked = requests.post(
            f"{servers[0].url}/v1/search/tokens", headers=KEY, json={"payload": payload, "k": 3}, timeout=30
        )
        assert asked.status_code == 200
        answer = asked.json()
        verdict = {"query_id": answer["query_id"], "verdict": "rejected", "candidate_id": answer["results"][0]["id"]}
        judged = requests.post(f"{servers[1].url}/v1/feedback", headers=KEY, json=verdict, timeout=30)
        assert judged.status_code == 200, judged.text  # replica B knows replica A's query
        for server in servers:
            summary = requests.get(f"{server.url}/v1/pilot/summary?group_by=overall", headers=KEY, timeout=30).json()
            assert summary["overall"]["queries"] == 1 and summary["overall"]["judged"] == 1
            assert summary["overall"]["false_hit_rate"] == 1.0
        ready = requests.get(f"{servers[1].url}/readyz", timeout=30).json()
        assert ready["ready"] and ready["checks"]["query_log"] == "ok"
    finally:
        for server in servers:
            server.stop()
        for s in states:
            s.close()
            s.feedback.close()


def test_a_postgres_url_keeps_its_slashes_and_a_dead_server_is_one_clear_error():
    import pytest

    from isacir.feedback import FeedbackError
    from isacir.feedback.postgres import PostgresFeedbackStore
    from isacir.serve.app import _feedback_location

    assert _feedback_location("postgresql://u:pw@db:5432/isacir") == "postgresql://u:pw@db:5432/isacir"
    with pytest.raises(FeedbackError, match=r"cannot connect to the feedback database postgresql://u:\*\*\*@") as info:
        PostgresFeedbackStore("postgresql://u:secret@127.0.0.1:1/none?connect_timeout=1", connect_timeout=2)
    assert "secret" not in str(info.value)
