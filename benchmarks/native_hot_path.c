/* An experiment, not part of the recorder: capture._record's blocking path written in C, to measure
 * what a native hot path would save (benchmarks/native_hot_path.py builds and times it). It reads the
 * same objects and appends the same records as the Python path. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <time.h>
#include <string.h>
#include <stdint.h>

static PyObject *state_mod, *dtype_codes, *native_wait;
static PyObject *s_events, *s_ct_info, *s_ct_twin, *s_seq, *s_asyncOp, *s_dtype, *s_is_cuda,
    *s_buffer, *s_done, *s_ids, *s_index, *s_step_code, *s_api_depth, *s_coalescing, *s_wait_inside, *s_max_bytes;

static inline int64_t mono(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#pragma pack(push, 1)
typedef struct { int64_t id, t0, seq, n_in, n_out, step; int32_t group, peer, root; int16_t op, dtype, api; uint8_t async, coal, device; } issue_t;
typedef struct { int64_t id, t1, gpu; uint8_t status; } done_t;
#pragma pack(pop)

static int append(PyObject *ba, const void *p, Py_ssize_t n) {
    Py_ssize_t len = PyByteArray_GET_SIZE(ba);
    if (PyByteArray_Resize(ba, len + n) < 0) return -1;
    memcpy(PyByteArray_AS_STRING(ba) + len, p, n);
    return 0;
}

static PyObject *init(PyObject *self, PyObject *args) {
    if (!PyArg_ParseTuple(args, "OOO", &state_mod, &dtype_codes, &native_wait)) return NULL;
    Py_INCREF(state_mod); Py_INCREF(dtype_codes); Py_INCREF(native_wait);
    Py_RETURN_NONE;
}

/* record(pg, fn, tensors, opts, x, n, op): capture._record's blocking path, for timing only. Every
 * Python call is checked; a failure raises (the benchmark has no step-aside path). */
static PyObject *record(PyObject *self, PyObject *const *a, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "record() takes 7 arguments");
        return NULL;
    }
    PyObject *pg = a[0], *fn = a[1], *tensors = a[2], *opts = a[3], *x = a[4];
    int64_t n = PyLong_AsLongLong(a[5]);
    int op = (int)PyLong_AsLong(a[6]);
    PyObject *s = NULL, *info = NULL, *twin = NULL, *o = NULL, *work = NULL;
    int64_t seq, rid, step;
    int is_async, cuda, group, coalesced, wait_inside, dtype = -1;
    Py_ssize_t max_bytes;
    if (PyErr_Occurred()) return NULL;
    if (!(s = PyObject_GetAttr(state_mod, s_events)) || !(info = PyObject_GetAttr(pg, s_ct_info)) ||
        !(twin = PyObject_GetAttr(pg, s_ct_twin)))
        goto fail;
    if (!(o = PyObject_GetAttr(info, s_seq)) || (seq = PyLong_AsLongLong(o)) == -1) goto fail;
    Py_SETREF(o, PyLong_FromLongLong(seq + 1));
    if (!o || PyObject_SetAttr(info, s_seq, o) < 0) goto fail;
    Py_SETREF(o, PyObject_GetAttr(opts, s_asyncOp));
    if (!o || (is_async = PyObject_IsTrue(o)) < 0) goto fail;
    Py_SETREF(o, PyObject_GetAttr(x, s_dtype));
    if (!o) goto fail;
    PyObject *code = PyDict_GetItemWithError(dtype_codes, o); /* borrowed */
    if (code) dtype = (int)PyLong_AsLong(code);
    else if (PyErr_Occurred()) goto fail;
    Py_SETREF(o, PyObject_GetAttr(x, s_is_cuda));
    if (!o || (cuda = PyObject_IsTrue(o)) < 0) goto fail;
    Py_SETREF(o, PyObject_GetAttr(s, s_ids));
    if (!o) goto fail;
    Py_SETREF(o, PyIter_Next(o));
    if (!o || (rid = PyLong_AsLongLong(o)) == -1) goto fail;
    Py_SETREF(o, PyObject_GetAttr(info, s_index));
    if (!o || (group = (int)PyLong_AsLong(o)) == -1) goto fail;
    Py_SETREF(o, PyObject_GetAttr(state_mod, s_step_code));
    if (!o) goto fail;
    step = PyLong_AsLongLong(o);
    if (PyErr_Occurred()) goto fail;
    /* The checks the Python path makes too: labels in progress, coalescing, the buffer's bound, how
     * the backend's works may be waited on. */
    Py_SETREF(o, PyObject_GetAttr(state_mod, s_api_depth));
    if (!o || PyLong_AsLong(o) != 0) goto fail; /* the benchmark runs no labelled call */
    Py_SETREF(o, PyObject_GetAttr(info, s_coalescing));
    if (!o || (coalesced = PyObject_IsTrue(o)) < 0) goto fail;
    Py_SETREF(o, PyObject_GetAttr(info, s_wait_inside));
    if (!o || (wait_inside = PyObject_IsTrue(o)) < 0) goto fail;
    Py_SETREF(o, PyObject_GetAttr(s, s_max_bytes));
    if (!o || (max_bytes = PyLong_AsSsize_t(o)) == -1) goto fail;
    issue_t is = {rid, mono(), seq, n, n, step, group, INT32_MIN, INT32_MIN, (int16_t)op, (int16_t)dtype, -1,
                  (uint8_t)is_async, (uint8_t)coalesced, (uint8_t)(cuda ? 2 : 1)};
    Py_SETREF(o, PyObject_GetAttr(s, s_buffer));
    if (!o || !PyByteArray_Check(o) || PyByteArray_GET_SIZE(o) >= max_bytes || append(o, &is, sizeof is) < 0)
        goto fail;
    PyObject *callargs[4] = {NULL, twin, tensors, opts};
    work = PyObject_Vectorcall(fn, callargs + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (!work) goto fail;
    if (!is_async && !cuda && wait_inside) {
        Py_SETREF(o, PyObject_CallOneArg(native_wait, work));
        done_t d = {rid, mono(), INT64_MIN, (uint8_t)(o ? 0 : 1)};
        if (!o) PyErr_Clear();
        Py_XSETREF(o, PyObject_GetAttr(s, s_done));
        if (!o || !PyByteArray_Check(o) || append(o, &d, sizeof d) < 0) goto fail;
    }
    Py_XDECREF(o);
    Py_DECREF(s);
    Py_DECREF(info);
    Py_DECREF(twin);
    return work;
fail:
    Py_XDECREF(o);
    Py_XDECREF(s);
    Py_XDECREF(info);
    Py_XDECREF(twin);
    Py_XDECREF(work);
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "record() failed");
    return NULL;
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, NULL},
    {"record", (PyCFunction)(void (*)(void))record, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_fastrec", NULL, -1, methods};
PyMODINIT_FUNC PyInit__fastrec(void) {
#define I(v, t) v = PyUnicode_InternFromString(t)
    I(s_events, "events"); I(s_ct_info, "_ct_info"); I(s_ct_twin, "_ct_twin"); I(s_seq, "seq");
    I(s_asyncOp, "asyncOp"); I(s_dtype, "dtype"); I(s_is_cuda, "is_cuda"); I(s_buffer, "issues");
    I(s_done, "dones"); I(s_ids, "ids"); I(s_index, "index"); I(s_step_code, "step_code");
    I(s_api_depth, "api_depth"); I(s_coalescing, "coalescing"); I(s_wait_inside, "wait_inside");
    I(s_max_bytes, "max_bytes");
    return PyModule_Create(&mod);
}
