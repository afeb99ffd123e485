"""Atom-order convention of the interface dataset (Dismai-Bench §2.1.3): elements, counts and the interface region.

Kept apart from :mod:`dismax.data.interface` (which builds and relaxes the set and so imports the potentials) for
modules that only need the layout, e.g. the U-Net baselines' interface-region augmentation.
"""

LI, O, CL, SC, CO = 3, 8, 17, 21, 27
ELEMENT_ORDER = (LI, SC, CO, CL, O)  # element blocks of every structure, in this order
CATIONS = (LI, SC, CO)
REGION_ORDER = (SC, CL, LI)  # placement order of the interface atoms
REGION_COUNTS = {LI: 9, SC: 3, CL: 18}  # interface-region atoms: the first ones of each of these blocks
COMPOSITION = {LI: 72, SC: 12, CO: 36, CL: 72, O: 72}
N_ATOMS = 264
