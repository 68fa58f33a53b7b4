"""Content addressing as IPFS does it: CIDs, dag-pb/UnixFS encoding, the kubo-identical file
importer, reading files back out of blocks, HTTP byte ranges. Pure: stdlib only, no I/O."""
