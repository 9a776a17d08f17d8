"""An OTLP/HTTP trace receiver for the tests: decodes what the gateway exports with
OpenTelemetry's published protobuf bindings (http/protobuf) or as OTLP/JSON (http/json), and
prints one JSON line per span on stdout. The first line is the port it listens on."""

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value_of(v):
    """An AnyValue (in its JSON mapping) as a plain value."""
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return v["boolValue"]
    if "arrayValue" in v:
        return [value_of(x) for x in v["arrayValue"].get("values", [])]
    return None


def attrs(kvs):
    return {kv["key"]: value_of(kv.get("value", {})) for kv in kvs or []}


def emit(req, ids_hex, headers):
    """One line per span; ids in hex whatever the encoding (protobuf JSON mapping: base64)."""
    hexid = (lambda s: s) if ids_hex else (lambda s: base64.b64decode(s).hex())
    for rs in req.get("resourceSpans", []):
        resource = attrs(rs.get("resource", {}).get("attributes"))
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                line = {
                    "trace_id": hexid(s["traceId"]),
                    "span_id": hexid(s["spanId"]),
                    "parent_span_id": hexid(s["parentSpanId"]) if s.get("parentSpanId") else "",
                    "trace_state": s.get("traceState", ""),
                    "name": s["name"],
                    "kind": s.get("kind", 0),
                    "start": int(s["startTimeUnixNano"]),
                    "end": int(s["endTimeUnixNano"]),
                    "flags": s.get("flags", 0),
                    "attributes": attrs(s.get("attributes")),
                    "status": s.get("status", {}),
                    "resource": resource,
                    "scope": ss.get("scope", {}).get("name", ""),
                    "headers": headers,
                }
                print(json.dumps(line), flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        ctype = self.headers.get("content-type", "")
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        if ctype == "application/x-protobuf":
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            emit(MessageToDict(req), False, headers)
            out, out_type = ExportTraceServiceResponse().SerializeToString(), ctype
        elif ctype == "application/json":
            emit(json.loads(body), True, headers)
            out, out_type = b"{}", ctype
        else:
            self.send_response(415)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", out_type)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
