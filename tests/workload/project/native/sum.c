/* The sum of n longs: the project's native library. */
long sum(const long *numbers, long n)
{
    long total = 0;
    for (long i = 0; i < n; i++)
        total += numbers[i];
    return total;
}
