#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>
#include <sys/mman.h>
#include <pthread.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct {float*p; size_t n; float r;} arg;
static void* sum(void*a_){arg*a=a_;__m512 s0=_mm512_setzero_ps(),s1=s0,s2=s0,s3=s0;for(size_t i=0;i<a->n;i+=64){s0=_mm512_add_ps(s0,_mm512_load_ps(a->p+i));s1=_mm512_add_ps(s1,_mm512_load_ps(a->p+i+16));s2=_mm512_add_ps(s2,_mm512_load_ps(a->p+i+32));s3=_mm512_add_ps(s3,_mm512_load_ps(a->p+i+48));}a->r=_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0,s1),_mm512_add_ps(s2,s3)));return 0;}
double rate(float*p,size_t n){pthread_t t;arg a={p,n/2},b={p+n/2,n/2};double t0=now();pthread_create(&t,0,sum,&a);sum(&b);pthread_join(t,0);return n*4/(now()-t0)/1e9;}
int main(int c,char**v){size_t n=(512ul<<20)/4;int huge=c>1&&atoi(v[1]);float*b[4];
for(int i=0;i<4;i++){b[i]=mmap(0,n*4,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);if(huge)madvise(b[i],n*4,MADV_HUGEPAGE);else madvise(b[i],n*4,MADV_NOHUGEPAGE);memset(b[i],1,n*4);}
for(int r=0;r<3;r++){for(int i=0;i<4;i++)printf("%5.1f ",rate(b[i],n));printf("\n");}}
