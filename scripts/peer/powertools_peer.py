"""The Python peer of the stream-processor benchmark (issue-level comparison, never run in CI).

What a team would write with Powertools for AWS Lambda (Python): `BatchProcessor` with
`EventType.DynamoDBStreams` and its `DynamoDBRecord` data class (images deserialized from
the attribute-value JSON), the same two cache-key templates rendered on the old and the new
image, deduplicated per batch, and packed into SNS-sized JSON messages the way Tidemark packs
them (keys until the escaped body reaches the budget). Publishing is a no-op, as the Rust
bench's null publisher is. Lag and residency are NOT done here (Tidemark's figure includes
them): the comparison favours the peer.

usage: python powertools_peer.py BATCH.json [ITERATIONS]
prints one JSON line: {"records": n, "mean_s": ..., "best_s": ..., "records_per_s": ...}
"""

import json
import sys
import time

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

TEMPLATES = ["user:{pk}", "user-email:{email}"]
BODY_BUDGET = 256 * 1024 - 8 * 1024  # Tidemark's BODY_BUDGET: SNS max minus envelope headroom


def render(template, image):
    try:
        return template.format(**{k: image[k] for k in ("pk", "email") if k in image})
    except KeyError:
        return None  # an image without the attribute renders no key


class Handler:
    def __init__(self):
        self.keys = {}

    def record(self, record: DynamoDBRecord):
        ddb = record.dynamodb
        for image in (ddb.old_image, ddb.new_image):
            if not image:
                continue
            for t in TEMPLATES:
                k = render(t, image)
                if k is not None:
                    self.keys.setdefault(k, record.event_id)

    def pack(self):
        messages, current, size = [], [], 0
        for k in self.keys:
            n = len(json.dumps(json.dumps(k))) + 1
            if current and size + n > BODY_BUDGET:
                messages.append(json.dumps({"v": 1, "source": "users", "keys": current}))
                current, size = [], 0
            current.append(k)
            size += n
        if current:
            messages.append(json.dumps({"v": 1, "source": "users", "keys": current}))
        return messages


def handle(event):
    h = Handler()
    processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
    response = process_partial_response(event=event, record_handler=h.record, processor=processor, context=None)
    assert not response.get("batchItemFailures"), response
    return h.pack()


def main():
    path = sys.argv[1]
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    raw = open(path, "rb").read()
    times = []
    for i in range(iterations + 2):
        start = time.perf_counter()
        event = json.loads(raw)  # Lambda hands the handler a parsed event; count it, as Rust parses too
        handle(event)
        if i >= 2:
            times.append(time.perf_counter() - start)
    n = len(json.loads(raw)["Records"])
    mean = sum(times) / len(times)
    print(json.dumps({"records": n, "mean_s": mean, "best_s": min(times), "records_per_s": n / mean}))


if __name__ == "__main__":
    main()
