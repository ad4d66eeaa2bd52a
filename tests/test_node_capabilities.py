"""What ltrr needs from OpenSearch, proven on the real node: k-NN (lucene), rank_feature(s),
stored mustache templates and _msearch/template, painless, and the LTR plugin."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.ltr.features import matches_every_doc  # a miss is 0, not NaN (3.x)


def _bulk(client, index, docs):
    body = []
    for doc_id, doc in docs:
        body.append({"index": {"_index": index, "_id": doc_id}})
        body.append(doc)
    resp = client.bulk(body=body, refresh=True)
    assert not resp["errors"], resp


def test_knn_lucene_hnsw_with_filter(os_client, index_name):
    rng = np.random.default_rng(7)
    dim = 16
    os_client.indices.create(index=index_name, body={
        "settings": {"index.knn": True, "number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {
            "vec": {"type": "knn_vector", "dimension": dim,
                    "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil",
                               "parameters": {"m": 16, "ef_construction": 100}}},
            "colour": {"type": "keyword"}}}})
    vectors = rng.normal(size=(60, dim)).astype(np.float32)
    colours = ["red" if i % 3 == 0 else "blue" for i in range(60)]
    _bulk(os_client, index_name, [(str(i), {"vec": vectors[i].tolist(), "colour": colours[i]}) for i in range(60)])

    query = rng.normal(size=dim).astype(np.float32)
    cos = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    red = [i for i in range(60) if colours[i] == "red"]
    expected = [str(i) for i in sorted(red, key=lambda i: -cos[i])[:5]]

    resp = os_client.search(index=index_name, body={"size": 5, "query": {"knn": {"vec": {
        "vector": query.tolist(), "k": 5, "filter": {"term": {"colour": "red"}}}}}})
    got = [h["_id"] for h in resp["hits"]["hits"]]
    assert got == expected
    assert all(colours[int(i)] == "red" for i in got)


def test_rank_feature_and_rank_features(os_client, index_name):
    os_client.indices.create(index=index_name, body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"popularity": {"type": "rank_feature"},
                                    "q2e": {"type": "rank_features"}}}})
    docs = [
        ("a", {"popularity": 5.0, "q2e": {"q_love": 0.9, "q_home": 0.1}}),
        ("b", {"popularity": 50.0, "q2e": {"q_love": 0.2}}),
        ("c", {"popularity": 1.0, "q2e": {"q_home": 3.0}}),
    ]
    _bulk(os_client, index_name, docs)
    by_pop = os_client.search(index=index_name, body={"query": {"rank_feature": {"field": "popularity"}}})
    assert [h["_id"] for h in by_pop["hits"]["hits"]] == ["b", "a", "c"]

    love = os_client.search(index=index_name, body={"query": {"rank_feature": {"field": "q2e.q_love", "linear": {}}}})
    hits = love["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["a", "b"]  # c has no q_love entry: not matched
    assert hits[0]["_score"] == pytest.approx(0.9, rel=0.01)  # 9 significant bits stored


def test_stored_templates_and_msearch_template(os_client, index_name):
    os_client.indices.create(index=index_name, body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"title": {"type": "text"}, "genre": {"type": "keyword"}}}})
    _bulk(os_client, index_name, [
        ("1", {"title": "love story", "genre": "pop"}),
        ("2", {"title": "home again", "genre": "rock"}),
        ("3", {"title": "love me do", "genre": "rock"}),
    ])
    tid_text = f"{index_name}-text"
    tid_genre = f"{index_name}-genre"
    os_client.put_script(id=tid_text, body={"script": {"lang": "mustache", "source": {
        "size": "{{size}}", "query": {"match": {"title": "{{q}}"}}}}})
    # Strings go inside quotes, where mustache JSON-escapes them; lists and maps go through
    # toJson. Either way a parameter can never close the surrounding JSON.
    os_client.put_script(id=tid_genre, body={"script": {"lang": "mustache", "source": (
        '{"size": {{size}}, "query": {"bool": {"filter": [{"term": {"genre": "{{genre}}"}},'
        ' {"terms": {"_id": {{#toJson}}ids{{/toJson}} }}]}}}')}})
    try:
        resp = os_client.msearch_template(body=[
            {"index": index_name}, {"id": tid_text, "params": {"q": "love", "size": 10}},
            {"index": index_name}, {"id": tid_genre, "params": {"genre": "rock", "size": 10, "ids": ["1", "2", "3"]}},
            {"index": index_name}, {"id": tid_genre, "params": {"genre": 'rock"}}, "match_all": {', "size": 10, "ids": ["2"]}},
        ])
        text_ids = sorted(h["_id"] for h in resp["responses"][0]["hits"]["hits"])
        genre_ids = sorted(h["_id"] for h in resp["responses"][1]["hits"]["hits"])
        assert text_ids == ["1", "3"]
        assert genre_ids == ["2", "3"]
        # An injection attempt stays a (non-matching) string value: no hits, no error.
        assert resp["responses"][2]["hits"]["total"]["value"] == 0
        rendered = os_client.render_search_template(id=tid_genre, body={"params": {"genre": '"}}\\', "size": 1, "ids": ["x"]}})
        assert rendered["template_output"]["query"]["bool"]["filter"][0]["term"]["genre"] == '"}}\\'
    finally:
        os_client.delete_script(id=tid_text)
        os_client.delete_script(id=tid_genre)


def test_painless_script(os_client, index_name):
    os_client.indices.create(index=index_name, body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"n": {"type": "integer"}}}})
    _bulk(os_client, index_name, [(str(i), {"n": i}) for i in range(1, 6)])
    resp = os_client.search(index=index_name, body={
        "query": {"script_score": {"query": {"match_all": {}},
                                   "script": {"source": "doc['n'].value * params.f", "params": {"f": 2.5}}}},
        "script_fields": {"sq": {"script": {"source": "doc['n'].value * doc['n'].value"}}}})
    hits = resp["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["5", "4", "3", "2", "1"]
    assert hits[0]["_score"] == pytest.approx(12.5)
    assert hits[0]["fields"]["sq"] == [25]


# ---------------------------------------------------------------------------------------------
# LTR plugin
# ---------------------------------------------------------------------------------------------

FEATURES = [
    {"name": "title_bm25", "params": ["keywords"], "template_language": "mustache",
     "template": matches_every_doc({"match": {"title": "{{keywords}}"}})},
    {"name": "body_bm25", "params": ["keywords"], "template_language": "mustache",
     "template": matches_every_doc({"match": {"body": "{{keywords}}"}})},
    {"name": "popularity", "params": [], "template_language": "mustache",
     "template": {"function_score": {"query": {"match_all": {}},
                                     "field_value_factor": {"field": "pop", "missing": 0},
                                     "boost_mode": "replace"}}},
]


def test_ltr_xgboost_model_sltr_rescore_and_logging(ltr_client, index_name):
    import xgboost as xgb

    client = ltr_client
    rng = np.random.default_rng(3)
    words = ["love", "home", "night", "rain", "fire", "gold"]
    client.indices.create(index=index_name, body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"title": {"type": "text"}, "body": {"type": "text"},
                                    "pop": {"type": "float"}}}})
    docs = []
    for i in range(40):
        title = " ".join(rng.choice(words, size=2))
        body = " ".join(rng.choice(words, size=6))
        docs.append((f"d{i}", {"title": title, "body": body, "pop": float(rng.integers(0, 10))}))
    _bulk(client, index_name, docs)
    fs = f"{index_name}-fs"
    model = f"{index_name}-model"
    client.transport.perform_request("PUT", f"/_ltr/_featureset/{fs}",
                                     body={"featureset": {"name": fs, "features": FEATURES}})
    try:
        keywords = "love"
        ids = [d for d, _ in docs]
        log_body = {"size": 40, "query": {"bool": {"filter": [
            {"terms": {"_id": ids}},
            {"sltr": {"_name": "logged", "featureset": fs, "params": {"keywords": keywords}}}]}},
            "ext": {"ltr_log": {"log_specs": {"name": "log1", "named_query": "logged", "missing_as_zero": True}}}}
        logged = client.search(index=index_name, body=log_body)
        X, order = [], []
        for hit in logged["hits"]["hits"]:
            values = {f["name"]: f.get("value", 0.0) for f in hit["fields"]["_ltrlog"][0]["log1"]}
            X.append([values[f["name"]] for f in FEATURES])
            order.append(hit["_id"])
        X = np.asarray(X, dtype=np.float32)
        pops = {d: doc["pop"] for d, doc in docs}
        # The logged popularity feature is exactly the field value.
        assert X[:, 2].tolist() == [pops[d] for d in order]

        labels = ((X[:, 0] > 0) & (X[:, 2] >= 5)).astype(int)
        booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "base_score": 0.5},
                            xgb.DMatrix(X, label=labels, feature_names=[f["name"] for f in FEATURES]),
                            num_boost_round=20)
        dump = [json.loads(t) for t in booster.get_dump(dump_format="json", with_stats=False)]
        client.transport.perform_request("POST", f"/_ltr/_featureset/{fs}/_createmodel", body={
            "model": {"name": model, "model": {"type": "model/xgboost+json",
                                               "definition": {"objective": "binary:logistic", "splits": dump}}}})
        local = booster.predict(xgb.DMatrix(X, feature_names=[f["name"] for f in FEATURES]))
        expected = {d: float(s) for d, s in zip(order, local)}

        ranked = client.search(index=index_name, body={"size": 40, "query": {"sltr": {
            "params": {"keywords": keywords}, "model": model}}})
        scores = {h["_id"]: h["_score"] for h in ranked["hits"]["hits"]}
        for d, s in expected.items():
            assert scores[d] == pytest.approx(s, abs=1e-4)

        rescored = client.search(index=index_name, body={
            "size": 10, "query": {"match": {"body": keywords}},
            "rescore": {"window_size": 10, "query": {
                "rescore_query": {"sltr": {"params": {"keywords": keywords}, "model": model}},
                "query_weight": 0.0, "rescore_query_weight": 1.0}}})
        got = [h["_id"] for h in rescored["hits"]["hits"]]
        assert got and [expected[d] for d in got] == sorted((expected[d] for d in got), reverse=True)
    finally:
        client.transport.perform_request("DELETE", f"/_ltr/_model/{model}", params={"ignore": 404})
        client.transport.perform_request("DELETE", f"/_ltr/_featureset/{fs}", params={"ignore": 404})
