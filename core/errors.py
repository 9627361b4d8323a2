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
