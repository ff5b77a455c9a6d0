"""The gateway's MQTT connection against a real mosquitto: every receive path, TLS, and flow control.

``drivers/mqtt/transport.py`` overrides paho internals for speed; these tests pin its behaviour to what paho
itself would deliver: fast and fallback PUBLISH decoding, QoS 0/1/2, MQTT 5 and 3.1.1, read-ahead under TLS,
and a broker that ignores the Receive Maximum we ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.mqtt import client as client_module
from drivers.mqtt.client import MqttClient, MqttConnectError
from drivers.mqtt.transport import GatewayPahoClient
from gateway.embedded import EmbeddedMosquitto, free_port

pytestmark = [pytest.mark.mqtt]


def _publisher(host: str, port: int, *, protocol: int = mqtt.MQTTv5, ca: Path | None = None) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{time.time_ns()}",
                    protocol=protocol)
    if ca is not None:
        c.tls_set(ca_certs=str(ca))
    c.connect(host, port)
    c.loop_start()
    return c




class Received:
    """Collects what the client delivers and acknowledges it, as the driver does after a commit."""

    def __init__(self, ack: bool = True) -> None:
        self.messages: list[Any] = []
        self.client: MqttClient | None = None
        self.ack = ack

    def __call__(self, msg: Any) -> None:
        self.messages.append(msg)
        if self.ack and self.client is not None and msg.qos == 1:
            self.client.ack_many([msg.mid])
        elif self.ack and self.client is not None and msg.qos == 2:
            self.client.ack(msg.mid, 2)  # PUBCOMP

    def payloads(self) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages]


async def _connect(url: str, client_id: str, received: Received, **kwargs: Any) -> MqttClient:
    """Subscribed to ``<client_id>/#`` only: the session broker also carries other tests' (retained) topics."""
    client = MqttClient(url, client_id, received, **kwargs)
    received.client = client
    await client.start()
    await client.subscribe([f"{client_id}/#"], qos=1)
    return client


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_every_publish_form_arrives_as_paho_would_deliver_it(mqtt_broker: EmbeddedMosquitto,
                                                                   protocol: str) -> None:
    t = f"forms-{protocol}"
    pub = _publisher(mqtt_broker.host, mqtt_broker.port)
    pub.publish(f"{t}/r/status", b"online", qos=1, retain=True).wait_for_publish(5)  # before we subscribe
    received = Received()
    client = await _connect(mqtt_broker.url, t, received, protocol=protocol)
    await client.subscribe([f"{t}-q2/#"], qos=2)  # QoS 2 arrives as QoS 2 here: paho's own handshake
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("trace", "abc")
    sent = [
        (f"{t}/a/telemetry", b'{"plain": 0}', 0, None),
        (f"{t}/a/telemetry", b'{"plain": 1}', 1, None),
        (f"{t}/b/event", b'{"with": "user property"}', 1, props),  # properties: paho's own decoder
        (f"{t}/c/status", b"online", 2, None),  # QoS 2 delivered at 1, the subscription's QoS
        (f"{t}-q2/c/status", b"offline", 2, None),
        (f"{t}/\u8857/telemetry", b"\xff\xfe not json", 1, None),  # a UTF-8 topic, a payload of any bytes
        (f"{t}/d/telemetry", b"", 1, None),
    ]
    await until(lambda: len(received.messages) == 1, what="the retained message")
    for topic, payload, qos, properties in sent:
        pub.publish(topic, payload, qos=qos, properties=properties).wait_for_publish(5)
    await until(lambda: len(received.messages) == len(sent) + 1, what="all messages")
    got = [(m.topic, bytes(m.payload), m.qos, bool(m.retain)) for m in received.messages]
    assert got[0] == (f"{t}/r/status", b"online", 1, True)
    expected_qos = [min(q, 1) if not topic.startswith(f"{t}-q2/") else 2 for topic, _, q, _ in sent]
    expected = [(topic, p, q, False) for (topic, p, _, _), q in zip(sent, expected_qos, strict=True)]
    assert sorted(got[1:]) == sorted(expected)  # the QoS 2 one comes after its handshake: order aside
    assert [g for g in got[1:] if g[2] < 2] == [e for e in expected if e[2] < 2]  # the rest in publish order
    transport = client._client
    assert transport is not None
    slow = 2 if protocol == "5" else 1  # the user property (MQTT 5 only) and the QoS 2 message
    assert transport.slow_publishes == slow and transport.fast_publishes == len(sent) + 1 - slow
    await asyncio.sleep(0.2)
    assert client.unacked == 0  # everything was acknowledged, QoS 2 with PUBCOMP
    pub.loop_stop()
    pub.disconnect()
    await client.stop()


def test_fast_publish_decoding_leaves_malformed_packets_to_paho() -> None:
    """Packets paho refuses (QoS 3; a topic longer than the packet) take paho's path, which reports them."""
    client = GatewayPahoClient(callback_api_version=CallbackAPIVersion.VERSION2, client_id="parse",
                               protocol=mqtt.MQTTv311, on_inbound=lambda msg: delivered.append(msg))
    delivered: list[Any] = []
    cases = [
        (0x36, b"\x00\x03a/b\x00\x01x"),  # QoS 3
        (0x30, b"\x00\x09a/b"),  # topic length 9, 3 bytes left
        (0x32, b"\x00\x03a/b\x00"),  # QoS 1, packet id cut short
    ]
    for command, packet in cases:
        client._in_packet = {"command": command, "packet": bytearray(packet)}  # what paho's reader fills in
        with contextlib.suppress(Exception):  # paho raises or returns a protocol error: either is a refusal
            assert client._handle_publish() != mqtt.MQTT_ERR_SUCCESS
    assert delivered == [] and client.fast_publishes == 0 and client.slow_publishes == len(cases)
    client._in_packet = {"command": 0x32, "packet": bytearray(b"\x00\x03a/b\x00\x07hello")}
    assert client._handle_publish() == mqtt.MQTT_ERR_SUCCESS
    [msg] = delivered
    assert (msg.topic, msg.payload, msg.qos, msg.mid, msg.retain) == ("a/b", b"hello", 1, 7, False)


async def test_batched_pubacks_release_exactly_the_acknowledged_messages(mqtt_broker: EmbeddedMosquitto) -> None:
    """The broker redelivers what we did not acknowledge, and only that, after a reconnect."""
    received = Received(ack=False)
    client = await _connect(mqtt_broker.url, "acks", received, max_inflight=500)
    pub = _publisher(mqtt_broker.host, mqtt_broker.port)
    for i in range(300):
        pub.publish("acks/x/telemetry", b"%d" % i, qos=1)
    await until(lambda: len(received.messages) == 300, what="300 messages")
    acked = [m for i, m in enumerate(received.messages) if i % 3]  # acknowledge two thirds, in one write
    client.ack_many([m.mid for m in acked])
    await asyncio.sleep(0.3)
    await client.stop()
    again = Received()
    client = await _connect(mqtt_broker.url, "acks", again, max_inflight=500)
    await until(lambda: len(again.messages) == 100, what="redelivery")
    await asyncio.sleep(0.3)
    assert sorted(again.payloads()) == sorted(b"%d" % i for i in range(0, 300, 3))
    assert all(m.dup for m in again.messages)
    pub.loop_stop()
    pub.disconnect()
    await client.stop()


async def test_a_broker_ignoring_receive_maximum_meets_our_own_flow_control(tmp_path: Path) -> None:
    """mosquitto 2.0 with ``max_inflight_messages 0`` stops honouring Receive Maximum after the first acks:
    the client then stops reading (TCP pushes back) instead of holding more than it asked for."""
    with EmbeddedMosquitto(extra_config="max_inflight_messages 0\n") as broker:
        received = Received(ack=False)
        client = await _connect(broker.url, "flow", received, max_inflight=50)
        pub = _publisher(broker.host, broker.port)
        for i in range(2000):
            pub.publish("flow/y/telemetry", b"%d" % i, qos=1)
        await until(lambda: len(received.messages) >= 50, what="a first window")
        peak = 0
        while len(received.messages) < 2000:
            unacked = [m.mid for m in received.messages[-client.unacked:]] if client.unacked else []
            peak = max(peak, client.unacked)
            client.ack_many(unacked)
            await asyncio.sleep(0.01)
            peak = max(peak, client.unacked)
        assert peak <= 51  # the window asked for, plus the one message that shows the broker overran it
        assert client.stats["flow_pauses"] > 0  # the broker did overrun, and the pause caught it
        assert sorted(received.payloads(), key=int) == [b"%d" % i for i in range(2000)]
        pub.loop_stop()
        pub.disconnect()
        await client.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    for name in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN=patrolgate test {name}")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
        "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.pem", "-days", "2", "-extfile", "san.ext")
    yield {"ca": d / "ca.pem", "other_ca": d / "other-ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


async def test_tls_backlog_read_ahead_and_a_certificate_from_another_ca(tls_files: dict[str, Path]) -> None:
    tls_port = free_port()
    config = (f"listener {tls_port} 127.0.0.1\ncafile {tls_files['ca']}\ncertfile {tls_files['cert']}\n"
              f"keyfile {tls_files['key']}\n")
    with EmbeddedMosquitto(extra_config=config):
        url = f"mqtts://127.0.0.1:{tls_port}"
        received = Received()
        client = await _connect(url, "tls", received, tls_ca_file=str(tls_files["ca"]))
        await client.stop()  # leave a persistent session behind, so the backlog waits in the broker
        pub = _publisher("127.0.0.1", tls_port, ca=tls_files["ca"])
        for i in range(5000):
            pub.publish("tls/z/telemetry", b"%05d" % i + b" " * 200, qos=1)
        pub.publish("tls/z/telemetry", b"last", qos=1).wait_for_publish(10)
        # The backlog arrives in TLS records holding many packets: everything read ahead must be delivered.
        client = await _connect(url, "tls", received, tls_ca_file=str(tls_files["ca"]), max_inflight=1000)
        await until(lambda: len(received.messages) == 5001, what="the TLS backlog")
        assert [p[:5] for p in received.payloads()] == [b"%05d" % i for i in range(5000)] + [b"last"]
        await client.stop()

        stranger = MqttClient(url, "tls-wrong-ca", Received(), tls_ca_file=str(tls_files["other_ca"]))
        with pytest.raises(MqttConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await stranger.start(timeout_s=5)
        # tls_insecure: encrypted, the certificate not verified (a lab broker with a self-made certificate)
        insecure = Received()
        client = await _connect(url, "tls-insecure", insecure, tls_insecure=True)
        pub.publish("tls-insecure/z/telemetry", b"insecure but encrypted", qos=1)
        await until(lambda: insecure.payloads()[-1:] == [b"insecure but encrypted"], what="the insecure link")
        await client.stop()
        pub.loop_stop()
        pub.disconnect()


async def test_reconnect_waits_longer_after_each_failure_and_resumes_when_the_broker_is_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Broker gone: the attempts are spaced by a doubling backoff, jittered by +-50 % and capped (never a tight
    loop); broker back: the client reconnects by itself. The jitter draws are pinned to the ends of their range
    so that each wait is exact."""
    draws: list[tuple[float, float]] = []

    class EndsOfTheRange:
        def uniform(self, low: float, high: float) -> float:
            draws.append((low, high))
            return low if len(draws) % 2 else high

    monkeypatch.setattr(client_module, "random", EndsOfTheRange())
    monkeypatch.setattr(client_module, "RECONNECT_BACKOFF_MAX_S", 4 * client_module.RECONNECT_BACKOFF_INITIAL_S)
    failures: list[float] = []

    class Failures(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "reconnect" in record.getMessage():
                failures.append(time.monotonic())

    handler = Failures()
    logging.getLogger(client_module.__name__).addHandler(handler)
    received = Received()
    try:
        with EmbeddedMosquitto() as broker:
            client = MqttClient(broker.url, "backoff-test", received)
            received.client = client
            await client.start()
            try:
                broker.stop_server()
                await until(lambda: len(failures) >= 5, timeout=30, what="five failed reconnects")
                gaps = [b - a for a, b in itertools.pairwise(failures[:5])]
                step = client_module.RECONNECT_BACKOFF_INITIAL_S
                # Waits before attempts 2-5: 2, 4, 4 (the cap), 4 steps, times 1.5, 0.5, 1.5, 0.5.
                expected = [2 * step * 1.5, 4 * step * 0.5, 4 * step * 1.5, 4 * step * 0.5]
                for gap, wait in zip(gaps, expected, strict=True):
                    assert wait - 0.02 <= gap <= wait + 0.25, (gaps, expected)
                assert set(draws) == {(0.5, 1.5)}
                broker.start_server()
                await until(lambda: client.connected.is_set(), timeout=30, what="reconnected")
            finally:
                await client.stop()
    finally:
        logging.getLogger(client_module.__name__).removeHandler(handler)
