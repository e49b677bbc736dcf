"""A kafka source's SASL and TLS options: only the allow-listed ones; fstore writes the JAAS line itself."""
from __future__ import annotations

import pytest

from fstore.core.errors import InvalidDefinition
from fstore.definitions.kafka_security import client_options
from fstore.definitions.model import Source

SASL = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "fstore",
        "sasl.password": "p4ss word"}
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def source(options: dict) -> Source:
    return Source.from_dict({"kafka": {"bootstrap_servers": "broker:9093", "topic": "clicks"},
                             "schema": {"user_id": "int", "ts": "timestamp"}, "event_timestamp_column": "ts",
                             "options": options})


def test_sasl_over_tls_becomes_the_clients_settings():
    got = client_options(source({**SASL, "ssl.ca.pem": PEM}).options)
    assert got == {
        "kafka.security.protocol": "SASL_SSL", "kafka.sasl.mechanism": "SCRAM-SHA-512",
        "kafka.sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required '
                                  'username="fstore" password="p4ss word";',
        "kafka.ssl.truststore.type": "PEM", "kafka.ssl.truststore.certificates": PEM,
        "kafka.ssl.endpoint.identification.algorithm": "https"}
    assert client_options({}) == {"kafka.security.protocol": "PLAINTEXT"}


@pytest.mark.parametrize(("options", "field"), [
    # what loads a class or reads a server file is not on the list, whatever it is called
    ({"sasl.jaas.config": "com.sun.security.auth.module.JndiLoginModule required user.provider.url=\"ldap://x\";"},
     "source.options.sasl.jaas.config"),
    ({"sasl.login.callback.handler.class": "x.Y"}, "source.options.sasl.login.callback.handler.class"),
    ({"ssl.truststore.location": "/etc/shadow", "security.protocol": "SSL"}, "source.options.ssl.truststore.location"),
    ({"security.protocol": "SASL_INSECURE"}, "source.options.security.protocol"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "u"}, "source.options.sasl.password"),
    ({**SASL, "sasl.mechanism": "GSSAPI"}, "source.options.sasl.mechanism"),
    ({"sasl.username": "u"}, "source.options.sasl.username"),
    ({"ssl.ca.pem": PEM}, "source.options.ssl.ca.pem"),
    ({"security.protocol": "SSL", "ssl.ca.pem": "not a certificate"}, "source.options.ssl.ca.pem"),
    ({"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "none"},
     "source.options.ssl.endpoint.identification.algorithm"),
])
def test_what_a_stream_must_not_be_given_is_refused_naming_the_option(options, field):
    with pytest.raises(InvalidDefinition) as caught:
        source(options)
    assert caught.value.field == field


@pytest.mark.parametrize("password", ['x" ; com.sun.security.auth.module.JndiLoginModule required a="b',
                                      'x\\" y', "x;", "x\nsasl.jaas.config=y"])
def test_a_password_cannot_extend_the_jaas_line(password):
    with pytest.raises(InvalidDefinition) as caught:
        client_options({**SASL, "sasl.password": password})
    assert caught.value.field == "source.options.sasl.password"
