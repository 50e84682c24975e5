"""The one exception type that the CLI turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Something the user can fix: a bad recipe key, a missing file, a corrupt image, a wrong model.

    The message names the thing and what was expected. It may span several lines when several
    problems are reported at once (one per line); it never carries a traceback.
    """
