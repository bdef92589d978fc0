# -*- test-case-name: tests.test_environment -*-
"""
Options from the environment: the one place that maps ``PUSHPROX_*`` variables onto both
programs' options.

Every option of a ``usage.Options`` class (its ``optParameters``, ``optFlags`` and
``opt_`` methods, inherited ones included) can come from the variable ``PUSHPROX_`` + its
name in upper case with ``-`` (and ``.``) as ``_``: ``--scrape-auth FILE`` from
``PUSHPROX_SCRAPE_AUTH=FILE``, ``--allow-any`` from ``PUSHPROX_ALLOW_ANY=true``. A
repeatable option (one whose value is a list) takes a comma-separated list. An option
given on the command line wins: its variable is not read at all. A value that the
option refuses is a usage error naming the variable. A ``PUSHPROX_`` variable that no
option reads but that looks like one that does is a misspelling, said as a warning.
"""

from __future__ import annotations

import getopt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.python import reflect, usage

from pushprox.shared.options import OptionValueError, did_you_mean

PREFIX = "PUSHPROX_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
#: usage.Options' own flags, which mean nothing in an environment.
_NOT_FROM_ENVIRONMENT = frozenset({"help", "h", "version"})


@dataclass(frozen=True)
class EnvironmentOption:
    """One option that a variable can set."""

    #: The option's long name, without ``--``.
    flag: str
    #: ``parameter``, ``flag`` or ``method`` (an ``opt_`` method taking a value).
    kind: str

    @property
    def variable(self) -> str:
        """The variable that sets this option."""
        return PREFIX + re.sub(r"[-.]", "_", self.flag).upper()


def environment_options(options: usage.Options) -> list[EnvironmentOption]:
    """Every option of ``options`` that a variable can set, by the rules above."""
    found: dict[str, EnvironmentOption] = {}
    parameters: list[list[Any]] = []
    flags: list[list[Any]] = []
    reflect.accumulateClassList(type(options), "optParameters", parameters)
    reflect.accumulateClassList(type(options), "optFlags", flags)
    for row in parameters:
        found[row[0]] = EnvironmentOption(row[0], "parameter")
    for row in flags:
        found[row[0]] = EnvironmentOption(row[0], "flag")
    for attribute in dir(options):
        if not attribute.startswith("opt_"):
            continue
        flag = attribute[4:].replace("_", "-")
        if flag in _NOT_FROM_ENVIRONMENT or flag in found:
            continue
        takes_value = not usage.flagFunction(getattr(options, attribute), flag)
        found[flag] = EnvironmentOption(flag, "method" if takes_value else "flag")
    return sorted(found.values(), key=lambda option: option.flag)


def _canonical(options: usage.Options, flag: str, same_as: Mapping[str, str]) -> str:
    flag = same_as.get(flag, flag)
    return str(options.synonyms.get(flag, options.synonyms.get(flag.replace("-", "_"), flag)))


def flags_on_command_line(options: usage.Options, argv: list[str], *,
                          same_as: Mapping[str, str] | None = None) -> set[str]:
    """The options ``argv`` gives, by the name ``options`` files them under.

    ``same_as`` maps a flag to the one it is another name of (``port`` to ``listen``).
    """
    try:
        given, _ = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return set()  # parseOptions will report it
    return {_canonical(options, name.lstrip("-"), same_as or {}) for name, _value in given}


def apply_environment(
    options: usage.Options,
    environ: Mapping[str, str],
    *,
    skip: Iterable[str] = (),
    aliases: Mapping[str, str] | None = None,
    same_as: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """
    Set the options that variables of ``environ`` give, except those in ``skip``; the
    variable that set each option, by the option's name.

    ``aliases`` maps further variable names to flags (``FQDN`` to ``fqdn``); a
    ``PUSHPROX_`` variable wins over its alias. ``same_as`` is as for
    ``flags_on_command_line``.
    """
    same_as = same_as or {}
    applied: dict[str, str] = {}
    skipped = {_canonical(options, name, same_as) for name in skip}
    by_flag = {option.flag: option for option in environment_options(options)}
    for option in by_flag.values():
        variable = option.variable
        if variable not in environ:
            variable = next((alias for alias, flag in (aliases or {}).items()
                             if flag == option.flag and alias in environ), "")
        canonical = _canonical(options, option.flag, same_as)
        if not variable or canonical in skipped:
            continue
        try:
            _apply(options, option, environ[variable], repeatable=isinstance(
                options.opts.get(canonical), list))
        except OptionValueError as error:
            raise usage.UsageError(f"{variable}={environ[variable]!r}: {error.reason}") from None
        except (usage.UsageError, ValueError) as error:
            raise usage.UsageError(f"{variable}={environ[variable]!r}: {error}") from None
        applied[option.flag] = variable
    return applied


def misspelt_variables(environ: Mapping[str, str], known: Iterable[str]) -> dict[str, str]:
    """The ``PUSHPROX_`` variables of ``environ`` not in ``known`` that look like one that
    is, each with the one it looks like."""
    known = set(known)
    # Compared without the prefix, which every name shares and which would make any two
    # look alike.
    options = [name.removeprefix(PREFIX) for name in known if name.startswith(PREFIX)]
    found: dict[str, str] = {}
    for name in environ:
        if name.startswith(PREFIX) and name not in known:
            suggestion = did_you_mean(name.removeprefix(PREFIX), options)
            if suggestion is not None:
                found[name] = PREFIX + suggestion
    return found


def _apply(options: usage.Options, option: EnvironmentOption, value: str, *,
           repeatable: bool) -> None:
    if option.kind == "flag":
        if value.strip().lower() in _TRUE:
            method = getattr(options, "opt_" + option.flag.replace("-", "_"), None)
            if method is not None:
                method()
            else:
                options[option.flag] = 1
        elif value.strip().lower() not in _FALSE:
            raise ValueError("expected true or false")
        return
    if option.kind == "parameter":
        parameters: list[list[Any]] = []
        reflect.accumulateClassList(type(options), "optParameters", parameters)
        coerce = next((row[4] for row in parameters
                       if row[0] == option.flag and len(row) > 4), None)
        options[option.flag] = coerce(value) if coerce else value
        return
    method = getattr(options, "opt_" + option.flag.replace("-", "_"))
    if repeatable:
        for item in (part.strip() for part in value.split(",")):
            if item:
                method(item)
    else:
        method(value)
