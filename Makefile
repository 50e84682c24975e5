# Shortcuts for the README's commands. Each makes .venv/ on first use.
VENV ?= .venv

.PHONY: demo test clean

demo:  ## the offline transfer-learning demo (about 10 minutes on 2 CPU cores)
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -e ".[train]" && $(VENV)/bin/toolkit demo

test:  ## the fast tier, the README's test command (CI also runs the slow tier: -m slow)
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -e ".[test]" && $(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
