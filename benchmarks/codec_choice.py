"""Why the codec uses orjson: orjson vs msgspec (JSON and msgpack) vs stdlib json on a span batch.

Not part of the suite (msgspec is not a dependency): `pip install msgspec` in a scratch venv, then
`python benchmarks/codec_choice.py`. Figures are in BENCHMARKS.md.
"""
import timeit, orjson, msgspec, json, platform
span = {"trace_id": "a"*32, "span_id": "0000000700000001", "parent_id": "0000000900000001", "name": "agentlightning.message",
        "start_time": 1700000000000000000, "end_time": 1700000000000000000, "rollout_id": "rollout-1", "attempt_id": "attempt-0",
        "sequence_id": 12, "attributes": {"agentlightning.message.body": "thinking about step 3 of the plan", "message": "thinking about step 3 of the plan",
        "agentlightning.rollout_id": "rollout-1", "agentlightning.attempt_id": "attempt-0", "agentlightning.span_sequence_id": 12},
        "status": "UNSET", "status_description": None, "events": [], "resource": {"service.name": "agentemit", "process.pid": 123}}
batch = [dict(span, sequence_id=i) for i in range(1000)]
enc = msgspec.json.Encoder(); dec = msgspec.json.Decoder()
ob = orjson.dumps(batch); mb = enc.encode(batch)
def t(f, n=200): return min(timeit.repeat(f, number=n, repeat=5))/n/1000*1e6
print(f"python {platform.python_version()}, orjson {orjson.__version__}, msgspec {msgspec.__version__}; 1000-span batch, us/span (best of 5)")
print(f"encode  orjson {t(lambda: orjson.dumps(batch)):.3f}   msgspec {t(lambda: enc.encode(batch)):.3f}   stdlib json {t(lambda: json.dumps(batch).encode(), 20):.3f}")
print(f"decode  orjson {t(lambda: orjson.loads(ob)):.3f}   msgspec {t(lambda: dec.decode(mb)):.3f}   stdlib json {t(lambda: json.loads(ob), 20):.3f}")
mp = msgspec.msgpack.Encoder(); md = msgspec.msgpack.Decoder(); pb = mp.encode(batch)
print(f"msgpack (binary) encode {t(lambda: mp.encode(batch)):.3f} decode {t(lambda: md.decode(pb)):.3f}; size json {len(ob)/1000:.0f} B/span, msgpack {len(pb)/1000:.0f} B/span")
