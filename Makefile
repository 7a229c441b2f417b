# Aliases of ./dev.sh (the set-up lives there; make reports any failure as status 2, ./dev.sh keeps
# pytest's own exit status). TORCH_INDEX=... picks the torch build: see the README.
.PHONY: setup quickstart test
setup quickstart test:
	./dev.sh $@
