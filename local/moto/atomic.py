"""moto's server with every request applied atomically, and a log of every request.

DynamoDB applies a conditional write or a transaction as one step: concurrent requests
never see half of one, and a transaction that is cancelled changes nothing. moto 5.2's
server does not: it serves requests on threads with no lock around a backend's state, and
its TransactWriteItems checks and writes item by item, then, when one condition fails,
puts back a deep copy of the whole table taken when it began -- erasing every write other
requests acknowledged in between (and failing with "dictionary changed size during
iteration" when one lands during the copy). `tests/emulator.rs` races both servers.

`install()` changes three things and nothing else:
  * one lock around each request, held until its answer is complete, so every request --
    a conditional write, a transaction, a query -- is applied alone, as DynamoDB isolates
    them;
  * a cancelled transaction restores the items it touched instead of a whole-table copy
    (equivalent once requests are serialised, and its cost no longer grows with the table);
  * a Query on a table's key reads the items of its partition key, as DynamoDB does,
    instead of sorting and filtering every item of the table (~35 ms a query at 20,000
    items).
With PUSHDEPLOY_MOTO_REQUEST_LOG set to a file, each request appends one line to it:
`<unix seconds> <operation> <HTTP status> <milliseconds> <request bytes> <answer bytes>
<entries>`, the operation being `X-Amz-Target` for JSON services
(`DynamoDB_20120810.TransactWriteItems`) or the method and path otherwise, the
milliseconds those the request held the lock, and the entries the items of a
TransactWriteItems or the events of a PutEvents (0 otherwise): what a request costs is
computed from them.
"""

import copy
import io
import json
import os
import threading
import time

from moto import server
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

_requests = threading.Lock()
_original_transact = DynamoDBBackend.transact_write_items


def _key_of(table, op_type, op):
    attrs = op["Item"] if op_type == "Put" else op["Key"]
    hash_key = DynamoType(attrs[table.hash_key_attr])
    range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
    return hash_key, range_key


def _restore(table, hash_key, range_key, item):
    if range_key is None:
        if item is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = item
    elif item is None:
        table.items.get(hash_key, {}).pop(range_key, None)
    else:
        table.items[hash_key][range_key] = item


def _transact_write_items(self, transact_items):
    saved = []
    for entry in transact_items:
        try:
            op_type, op = next(iter(entry.items()))
            table = self.get_table(op["TableName"])
            hash_key, range_key = _key_of(table, op_type, op)
            before = table.get_item(hash_key, range_key)
        except Exception:
            continue  # moto's own code reports what is wrong with this entry
        saved.append((table, hash_key, range_key, copy.deepcopy(before)))
    # moto's whole-table copy becomes the table itself (its restore a no-op); the items
    # saved above are put back instead.
    Table.__deepcopy__ = lambda table, memo: table
    try:
        _original_transact(self, transact_items)
    except BaseException:
        for table, hash_key, range_key, item in reversed(saved):
            _restore(table, hash_key, range_key, item)
        raise
    finally:
        del Table.__deepcopy__


_original_query = Table.query


def _query(self, hash_key, *args, **kwargs):
    index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
    if index_name or self.range_key_attr is None:
        return _original_query(self, hash_key, *args, **kwargs)
    partition = self.items.get(hash_key, {})
    # moto's query filters all_items() by hash key: give it the partition alone.
    self.all_items = lambda: sorted(partition.values(), key=lambda item: item.range_key)
    try:
        return _original_query(self, hash_key, *args, **kwargs)
    finally:
        del self.all_items


def _entries(operation, body):
    """The items of a transaction, the events of a PutEvents."""
    field = {
        "DynamoDB_20120810.TransactWriteItems": "TransactItems",
        "AWSEvents.PutEvents": "Entries",
    }.get(operation)
    if field is None:
        return 0
    try:
        return len(json.loads(body).get(field, []))
    except ValueError:
        return 0


def _operation(environ):
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target
    return f"{environ.get('REQUEST_METHOD', '?')}:{environ.get('PATH_INFO', '/')}"


def install():
    """Wraps the server's application (whatever it is now) and moto's transactions."""
    DynamoDBBackend.transact_write_items = _transact_write_items
    Table.query = _query
    log_path = os.environ.get("PUSHDEPLOY_MOTO_REQUEST_LOG")
    log = open(log_path, "a", buffering=1) if log_path else None
    base = server.DomainDispatcherApplication

    class Atomic(base):
        def __call__(self, environ, start_response):
            status = []

            def recording(code, headers, exc_info=None):
                status.append(code.split(" ", 1)[0])
                return start_response(code, headers, exc_info)

            operation = _operation(environ)
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = b""
            if length > 0:
                body = environ["wsgi.input"].read(length)
                environ["wsgi.input"] = io.BytesIO(body)
            with _requests:
                began = time.perf_counter()
                answer = b"".join(super().__call__(environ, recording))
                if log is not None:
                    held = (time.perf_counter() - began) * 1e3
                    log.write(
                        f"{time.time():.6f} {operation} {status[0]} {held:.2f} "
                        f"{len(body)} {len(answer)} {_entries(operation, body)}\n"
                    )
            return [answer]

    server.DomainDispatcherApplication = Atomic
