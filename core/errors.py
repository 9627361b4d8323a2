"""User-facing errors. Every one names where (file, row, field) and the fix; the CLI prints it and exits 2."""


class MaskLensError(Exception):
    """A user-facing error: names where (file, row, field) and the fix. The CLI prints it without a traceback and exits 2."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ):
        self.file, self.row, self.field, self.fix = file, row, field, fix
        where = ", ".join(
            p
            for p in (
                f"file {file}" if file else "",
                f"row {row}" if row is not None else "",
                f"field '{field}'" if field else "",
            )
            if p
        )
        text = f"{where}: {message}" if where else message
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)
        self.message = message


def read_text_file(path, what: str, fix: str) -> str:
    """The UTF-8 text of a user's file (a rules file, an experiment config...). Errors name the file and the fix:
    `what` names the kind of file ("rules file"), `fix` says what to give instead when it is missing."""
    from pathlib import Path  # noqa: PLC0415 - errors.py is imported by everything: keep it light

    p = Path(path)
    if not p.is_file():
        raise MaskLensError(f"no such {what}" if not p.exists() else "is not a file", file=str(path), fix=fix)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MaskLensError(f"is not UTF-8 text ({e.reason})", file=str(path), fix="save the file as UTF-8") from None
