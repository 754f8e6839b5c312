# Molecule tiers (need root): systemd-nspawn containers and a QEMU VM under software emulation.
# The image is built once into .build/molecule and reused (scripts/molecule/build-image.sh).
.PHONY: molecule molecule-image molecule-nspawn molecule-vm

molecule-image:
	@if [ "$$(id -u)" != 0 ]; then echo "molecule: skipped (needs root)"; else scripts/molecule/build-image.sh; fi

molecule-nspawn: setup molecule-image
	@if [ "$$(id -u)" != 0 ]; then echo "molecule-nspawn: skipped (needs root)"; else \
	  cd extensions && time $(BIN)/molecule test -s nspawn; fi

molecule-vm: setup molecule-image
	@if [ "$$(id -u)" != 0 ]; then echo "molecule-vm: skipped (needs root)"; else \
	  cd extensions && time $(BIN)/molecule test -s vm; fi

molecule: molecule-nspawn molecule-vm
