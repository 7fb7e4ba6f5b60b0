# The two commands the README gives a new user on a fresh Debian machine.
.PHONY: demo test setup lint

demo:  ## install what is needed, start the local stack, roll out and ping (see README)
	./scripts/demo.sh

test:  ## install everything, run every check and the whole test suite
	./scripts/test.sh

setup:
	./scripts/setup.sh
