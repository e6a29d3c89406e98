"""`batchgen serve` as a real subprocess: SIGKILL in the middle of a batch and a restart on the same state answer
every line exactly once; SIGINT/SIGTERM stop it cleanly; a public host needs a token; clients that cut a body short
or go away mid-download get a clean answer or one log line, never a traceback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import openai
from emulator_fixtures import chat_line, jsonl, rows
from loopback import free_port as _free_port
from loopback import serve as _serve

from batchgen.emulator import EmulatorControl


def _stop(process: subprocess.Popen, sig: int) -> tuple[int, str]:
    process.send_signal(sig)
    _, err = process.communicate(timeout=15)
    return process.returncode, err


def test_sigkill_and_restart_answer_every_line_exactly_once(tmp_path):
    state, port = tmp_path / "state", _free_port()
    base = f"http://127.0.0.1:{port}/v1"
    timing = ("--validation-seconds", "0", "--line-seconds", "0.0015", "--finalizing-seconds", "0")
    total = 1500
    process = _serve(state, port, *timing)
    client = openai.OpenAI(base_url=base, api_key="k", max_retries=0)
    try:
        file_id = client.files.create(file=("in.jsonl", jsonl([chat_line(i) for i in range(total)])),
                                      purpose="batch").id
        batch_id = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                         completion_window="24h").id
        kills = 0
        while kills < 3:
            done = client.batches.retrieve(batch_id).request_counts.completed
            if done > (kills + 1) * total // 5:
                process.kill()
                process.communicate(timeout=10)
                kills += 1
                process = _serve(state, port, *timing)
            time.sleep(0.05)
        batch = EmulatorControl(base).wait_for(batch_id, timeout=30)
        assert batch["status"] == "completed"
        assert batch["request_counts"] == {"total": total, "completed": total, "failed": 0}
        output = rows(client, batch["output_file_id"])
        ids = [r["custom_id"] for r in output]
        assert len(ids) == total and set(ids) == {f"req-{i}" for i in range(total)}
        assert batch["usage"]["input_tokens"] == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in output)
        assert client.files.retrieve(file_id).bytes > 0
        assert [b.id for b in client.batches.list()] == [batch_id]
    finally:
        client.close()
        returncode, err = _stop(process, signal.SIGTERM)
    assert returncode == 0 and "Traceback" not in err


def test_sigint_stops_cleanly_and_state_survives(tmp_path):
    state, port = tmp_path / "state", _free_port()
    process = _serve(state, port)
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as client:
        file_id = client.files.create(file=("a.jsonl", json.dumps(chat_line(0)).encode()), purpose="batch").id
    returncode, err = _stop(process, signal.SIGINT)
    assert returncode == 0 and "Traceback" not in err
    assert f"Batch API emulator: http://127.0.0.1:{port}/v1 (state {state}; simulated answers)" in err
    process = _serve(state, port, "--token", "t0k")
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="t0k", max_retries=0) as client:
            assert client.files.retrieve(file_id).id == file_id
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0) as client:
            try:
                client.files.list()
            except openai.AuthenticationError as error:
                assert error.status_code == 401
            else:
                raise AssertionError("a wrong token was accepted")
    finally:
        returncode, err = _stop(process, signal.SIGTERM)
    assert returncode == 0 and "Traceback" not in err


def test_public_host_without_token_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "batchgen", "serve", "--host", "0.0.0.0", "--state",
                             str(tmp_path / "s")], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "BATCHGEN_SERVE_TOKEN": ""})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--token" in result.stderr and "Traceback" not in result.stderr


def test_the_start_line_says_where_answers_come_from(tmp_path):
    state, port = tmp_path / "state", _free_port()
    process = _serve(state, port, "--upstream", "http://127.0.0.1:9/v1")
    returncode, err = _stop(process, signal.SIGTERM)
    assert returncode == 0
    assert f"(state {state}; lines forwarded to http://127.0.0.1:9/v1)" in err


BOUNDARY = "b0undary"
CUT_BODY = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            f"Content-Type: application/jsonl\r\n\r\n{json.dumps(chat_line(0))}\n").encode()


def _post_upload(port: int, body: bytes) -> tuple[int, dict]:
    """POST /v1/files with a raw multipart body; the status and the JSON answer (the timeout only ends a hang)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/v1/files", body=body,
                           headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_multipart_body_without_its_closing_boundary_gets_400_and_stores_nothing(tmp_path):
    port = _free_port()
    process = _serve(tmp_path / "state", port)
    try:
        for body in (CUT_BODY, CUT_BODY + f"\r\n--{BOUNDARY}".encode()):  # cut inside the file part, in the boundary
            status, answer = _post_upload(port, body)
            assert status == 400
            assert set(answer["error"]) == {"message", "type", "param", "code"}
            assert answer["error"]["message"] == "The multipart body ended before its closing boundary."
            assert answer["error"]["type"] == "invalid_request_error"
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as client:
            assert client.files.list().data == []
        status, answer = _post_upload(port, CUT_BODY + f"\r\n--{BOUNDARY}--\r\n".encode())
        assert status == 200 and answer["bytes"] == len(json.dumps(chat_line(0))) + 1
    finally:
        returncode, err = _stop(process, signal.SIGTERM)
    assert returncode == 0 and "Traceback" not in err


def test_a_client_that_goes_away_mid_upload_or_mid_download_is_one_log_line_each(tmp_path):
    port = _free_port()
    process = _serve(tmp_path / "state", port, log_level="info")
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as client:
            big = client.files.create(file=("big.jsonl", jsonl([chat_line(i, content="x" * 4000)
                                                                for i in range(8000)])), purpose="batch")
            assert big.bytes > 32_000_000  # more than loopback buffers hold, so the download is cut for real
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                sock.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: {10 * len(CUT_BODY)}\r\n"
                             f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode() + CUT_BODY)
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                sock.sendall(f"GET /v1/files/{big.id}/content HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                received = 0
                while received < 100_000:
                    received += len(sock.recv(65536))
            assert [f.id for f in client.files.list().data] == [big.id]  # the cut upload stored nothing
    finally:
        returncode, err = _stop(process, signal.SIGTERM)
    assert returncode == 0 and "Traceback" not in err, err
    gone = [line for line in err.splitlines() if "disconnected" in line]
    assert len(gone) == 2, err
    upload, download = sorted(gone, key=lambda line: "GET" in line)
    assert upload.startswith("INFO:") and "before it had sent all of POST /v1/files" in upload
    assert f"while reading the answer to GET /v1/files/{big.id}/content" in download
    assert f"of {big.bytes:,} bytes sent" in download
