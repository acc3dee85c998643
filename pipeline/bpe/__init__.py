"""Visual BPE on 2D code grids, train and encode side by side (the contract: docs/bpe.md).

reference   the slow learner and encoder written from the contract (tests compare against it)
constants   grid limits, the neighbour table, id and offset packing (no numba: light to import)
instances   instances on grids: neighbours, partner choice, absorb (numba)
hashtable   open-addressing tables for numba hot loops
shard_kernels, shard   one shard's occurrences, merge candidates and deltas; GridShards
stats       pair statistics (F, offset histogram, S, P) and the lazy max-heap of the next merge
learner     the merge loop; learn_arrays for grids in memory
encoder     BpeEncoder: apply a vocabulary to new grids
vocab       the vocabulary file (JSON)
"""
