"""Crystal graphs without torch: graph settings and the neighbour rule, element features, the CSR container
that every floor passes graphs in, and equivalent-atom merging."""
