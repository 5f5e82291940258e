"""`<PREFIX><FIELD>_FILE=/path`: any secret setting read from a file instead of the environment.

Kubernetes and Docker mount secrets as files; a file keeps the value out of `/proc/<pid>/environ`,
`docker inspect` and crash reports that dump the environment. This works for every field typed
`SecretStr` (or `SecretStr | None`), so a new secret setting gets its `_FILE` variant for free:
`LEDGERFLOW_DATABASE_URL_FILE`, `LEDGERFLOW_KAFKA_SASL_PASSWORD_FILE`, ...

Setting both `X` and `X_FILE` is an error (which one would win is a guess an operator should not
have to make). One trailing newline is dropped, as `echo secret > file` adds it. Errors name the
variable and the path, never the content.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from pydantic_settings import PydanticBaseSettingsSource
from pydantic_settings.exceptions import SettingsError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic.fields import FieldInfo
    from pydantic_settings import BaseSettings

FILE_SUFFIX = "_FILE"
SECRET_FILE_BYTES_MAX = 64 * 1024  # a URL, a password or a key; anything bigger is a wrong path


def is_secret(annotation: Any) -> bool:
    """`SecretStr`, or a union such as `SecretStr | None`."""
    if annotation is SecretStr:
        return True
    if typing.get_origin(annotation) in {typing.Union, types.UnionType}:
        return SecretStr in typing.get_args(annotation)
    return False


def read_secret_file(variable: str, path: Path) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(SECRET_FILE_BYTES_MAX + 1)
    except OSError as error:
        raise SettingsError(f"{variable}: cannot read {path}: {error.strerror}") from None
    if len(raw) > SECRET_FILE_BYTES_MAX:
        raise SettingsError(f"{variable}: {path} is larger than {SECRET_FILE_BYTES_MAX} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"{variable}: {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise SettingsError(f"{variable}: {path} is empty")
    return text


class SecretFileSource(PydanticBaseSettingsSource):
    """A settings source: ranks after the environment and before defaults."""

    def __init__(
        self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(settings_cls)
        environ = os.environ if environ is None else environ
        # Names are case-insensitive, as for the other variables (case_sensitive=False).
        self._environ = {key.upper(): value for key, value in environ.items()}
        self._prefix = str(self.config.get("env_prefix") or "").upper()

    def get_field_value(
        self,
        field: FieldInfo,  # noqa: ARG002 - the base class's signature
        field_name: str,
    ) -> tuple[Any, str, bool]:
        # Required by the base class; __call__ below does all the work.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if not is_secret(field.annotation):
                continue
            variable = f"{self._prefix}{name.upper()}"
            path = self._environ.get(variable + FILE_SUFFIX, "").strip()
            if not path:
                continue
            if variable in self._environ:
                raise SettingsError(f"set {variable} or {variable}{FILE_SUFFIX}, not both")
            values[name] = read_secret_file(variable + FILE_SUFFIX, Path(path))
        return values
