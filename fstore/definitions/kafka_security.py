"""How a stream authenticates to Kafka and checks its certificates: a kafka source's ``options``.

Production brokers take SASL and TLS. A kafka source names them in ``source.options``, from this allow-list
only, so a registry writer cannot hand the Kafka client a setting that loads a class or reads a file of the
server: Kafka's own ``sasl.jaas.config`` names a login module class (a JNDI login module reaches any LDAP
server, as in CVE-2023-25194), and ``*.callback.handler.class`` or ``ssl.truststore.location`` do the like.
fstore writes the JAAS line itself, for the two login modules it names, from a user name and a password.

| option | values |
|---|---|
| ``security.protocol`` | ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL`` |
| ``sasl.mechanism`` | ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512`` (with ``SASL_*``, required) |
| ``sasl.username``, ``sasl.password`` | with ``SASL_*``, required; the password is a secret (``fstore.definitions.secrets``: sealed at rest, redacted in answers, or a ``${FSTORE_SOURCE_…}`` reference) |
| ``ssl.ca.pem`` | the CA certificates (PEM text) the broker's certificate must chain to (``SSL``/``SASL_SSL``; default: the JVM's) |
| ``ssl.endpoint.identification.algorithm`` | ``https`` (default: the broker's host name is checked) or empty (not checked) |
"""
from __future__ import annotations

from typing import Mapping

from fstore.core.errors import InvalidDefinition

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = {"PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
              "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
              "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule"}
OPTIONS = ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.pem",
           "ssl.endpoint.identification.algorithm")


def check_options(options: Mapping[str, str]) -> None:
    """Refuse, naming the option, what a stream could not use or must not be given (values as stored: the
    password may be sealed or a reference, so its characters are checked when the stream starts)."""
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise InvalidDefinition(f"source.options {', '.join(map(repr, unknown))} cannot be given to a kafka source; it "
                                f"takes {', '.join(OPTIONS)}", field=f"source.options.{unknown[0]}")
    protocol = options.get("security.protocol", "PLAINTEXT")
    if protocol not in PROTOCOLS:
        raise InvalidDefinition(f"source.options.security.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}",
                                field="source.options.security.protocol")
    sasl = protocol.startswith("SASL_")
    given = [k for k in ("sasl.mechanism", "sasl.username", "sasl.password") if options.get(k)]
    if sasl and len(given) < 3:
        missing = [k for k in ("sasl.mechanism", "sasl.username", "sasl.password") if k not in given]
        raise InvalidDefinition(f"security.protocol {protocol} needs source.options {', '.join(missing)}",
                                field=f"source.options.{missing[0]}")
    if not sasl and given:
        raise InvalidDefinition(f"source.options {', '.join(given)} need security.protocol SASL_PLAINTEXT or SASL_SSL",
                                field=f"source.options.{given[0]}")
    if sasl and options["sasl.mechanism"] not in MECHANISMS:
        raise InvalidDefinition(f"source.options.sasl.mechanism {options['sasl.mechanism']!r} is not one of "
                                f"{', '.join(MECHANISMS)}", field="source.options.sasl.mechanism")
    tls = [k for k in ("ssl.ca.pem", "ssl.endpoint.identification.algorithm") if k in options]
    if tls and not protocol.endswith("SSL"):
        raise InvalidDefinition(f"source.options {', '.join(tls)} need security.protocol SSL or SASL_SSL",
                                field=f"source.options.{tls[0]}")
    if options.get("ssl.endpoint.identification.algorithm", "https") not in ("https", ""):
        raise InvalidDefinition("source.options.ssl.endpoint.identification.algorithm is https or empty",
                                field="source.options.ssl.endpoint.identification.algorithm")
    pem = options.get("ssl.ca.pem")
    if pem is not None and "-----BEGIN CERTIFICATE-----" not in pem:
        raise InvalidDefinition("source.options.ssl.ca.pem must hold PEM certificates (-----BEGIN CERTIFICATE-----)",
                                field="source.options.ssl.ca.pem")


def client_options(options: Mapping[str, str]) -> dict[str, str]:
    """The Kafka client settings (prefixed ``kafka.`` for Spark's Kafka source) of resolved (plain) ``options``."""
    check_options(options)
    protocol = options.get("security.protocol", "PLAINTEXT")
    out = {"kafka.security.protocol": protocol}
    if protocol.startswith("SASL_"):
        mechanism = options["sasl.mechanism"]
        user, password = options["sasl.username"], options["sasl.password"]
        for name, value in (("sasl.username", user), ("sasl.password", password)):
            if any(c in value for c in '"\\;\n\r'):  # a JAAS line must not be extended through a value
                raise InvalidDefinition(f"source.options.{name} may not hold a quote, a backslash, a semicolon or a "
                                        "line break", field=f"source.options.{name}")
        out["kafka.sasl.mechanism"] = mechanism
        out["kafka.sasl.jaas.config"] = f'{MECHANISMS[mechanism]} required username="{user}" password="{password}";'
    if protocol.endswith("SSL"):
        if "ssl.ca.pem" in options:
            out["kafka.ssl.truststore.type"] = "PEM"
            out["kafka.ssl.truststore.certificates"] = options["ssl.ca.pem"]
        out["kafka.ssl.endpoint.identification.algorithm"] = options.get("ssl.endpoint.identification.algorithm",
                                                                          "https")
    return out
